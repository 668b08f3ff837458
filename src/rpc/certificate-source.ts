import { experimental } from "@grpc/grpc-js";
import type { TlsConfig } from "../config.js";

type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

/**
 * The listener certificate, key and client CA as grpc-js's certificate
 * provider interface wants them. Listeners hear the current material just
 * after they are added, and every later `update`, so new connections get new
 * material without a restart.
 */
export class CertificateSource implements experimental.CertificateProvider {
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();

  constructor(private tls: TlsConfig) {}

  get current(): TlsConfig {
    return this.tls;
  }

  update(tls: TlsConfig): void {
    this.tls = tls;
    for (const l of this.caListeners) l(this.caUpdate());
    for (const l of this.identityListeners) l(this.identityUpdate());
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    // After the current tick: grpc-js adds its own watcher only after the provider's listeners.
    queueMicrotask(() => this.caListeners.has(listener) && listener(this.caUpdate()));
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    queueMicrotask(() => this.identityListeners.has(listener) && listener(this.identityUpdate()));
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }

  private caUpdate() {
    return this.tls.clientCa ? { caCertificate: this.tls.clientCa } : null;
  }

  private identityUpdate() {
    return { certificate: this.tls.cert, privateKey: this.tls.key };
  }
}
