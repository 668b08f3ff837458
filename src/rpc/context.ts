import type { PeerCertificate } from "node:tls";

/** The CN and DNS subject alternative names of a client certificate the TLS layer verified. */
export function certificateNames(cert: PeerCertificate | undefined): string[] {
  if (!cert || Object.keys(cert).length === 0) return [];
  const names: string[] = [];
  const cn = cert.subject?.CN;
  if (typeof cn === "string") names.push(cn);
  for (const part of (cert.subjectaltname ?? "").split(",")) {
    const m = /^\s*DNS:(.+)$/.exec(part);
    if (m) names.push(m[1]!.trim());
  }
  return names;
}

/** Epoch ms of a deadline given as a Date or epoch ms; undefined for none (Infinity). */
export function deadlineMs(deadline: Date | number): number | undefined {
  const ms = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(ms) ? ms : undefined;
}
