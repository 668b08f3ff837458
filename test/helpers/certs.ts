import { execFile as execFileCb } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const execFile = promisify(execFileCb);

async function openssl(dir: string, args: string[]): Promise<void> {
  await execFile("openssl", args, { cwd: dir });
}

const KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** PEM files for a test CA, a server certificate for 127.0.0.1/localhost, and client certificates. */
export interface TestCertificates {
  dir: string;
  caFile: string;
  serverCertFile: string;
  serverKeyFile: string;
  ca: Buffer;
  /** A client certificate signed by the CA: CN and one DNS SAN. */
  client(cn: string, san: string): Promise<{ cert: Buffer; key: Buffer }>;
  /** A self-signed certificate with the given CN: not trusted by the service. */
  rogue(cn: string): Promise<{ cert: Buffer; key: Buffer }>;
  /** Another server certificate for 127.0.0.1/localhost from the same CA (a rotation). */
  server(): Promise<{ cert: Buffer; key: Buffer }>;
}

/** Makes certificates with the openssl command line (Debian's openssl package). */
export async function makeCertificates(dir: string): Promise<TestCertificates> {
  await openssl(dir, ["req", "-x509", ...KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=token-service-test-ca"]);
  const sign = async (name: string, cn: string, ext: string) => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    await openssl(dir, ["req", ...KEY, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`]);
    await openssl(dir, [
      "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
      "-out", `${name}.crt`, "-days", "30", "-extfile", `${name}.ext`,
    ]);
    return { cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)) };
  };
  const serverExt = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
  await sign("server", "token-service", serverExt);
  let n = 0;
  return {
    dir,
    caFile: join(dir, "ca.crt"),
    serverCertFile: join(dir, "server.crt"),
    serverKeyFile: join(dir, "server.key"),
    ca: readFileSync(join(dir, "ca.crt")),
    client: (cn, san) => sign(`client${++n}`, cn, `subjectAltName=DNS:${san}\nextendedKeyUsage=clientAuth\n`),
    server: () => sign(`server${++n}`, "token-service", serverExt),
    async rogue(cn) {
      const name = `rogue${++n}`;
      await openssl(dir, ["req", "-x509", ...KEY, "-keyout", `${name}.key`, "-out", `${name}.crt`, "-days", "30", "-subj", `/CN=${cn}`]);
      return { cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)) };
    },
  };
}
