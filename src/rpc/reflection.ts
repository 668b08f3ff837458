import { create, fromBinary, toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  ServerReflection as ServerReflectionV1,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflection as ServerReflectionV1Alpha,
  ServerReflectionRequestSchema as AlphaRequestSchema,
  ServerReflectionResponseSchema as AlphaResponseSchema,
} from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/** gRPC status NOT_FOUND, as reflection's ErrorResponse carries it. */
const NOT_FOUND = 5;

/**
 * What reflection knows: the served services, and every file they (or the
 * extra files, such as error details) need, with their imports. Built once.
 */
export class DescriptorIndex {
  private readonly files = new Map<string, DescFile>();
  private readonly bySymbol = new Map<string, DescFile>();

  constructor(
    readonly services: DescService[],
    extraFiles: DescFile[] = [],
  ) {
    const add = (file: DescFile) => {
      if (this.files.has(file.proto.name)) return;
      this.files.set(file.proto.name, file);
      for (const dep of file.dependencies) add(dep);
      for (const type of nestedTypes(file)) {
        this.bySymbol.set(type.typeName, file);
        if (type.kind === "service") for (const m of type.methods) this.bySymbol.set(`${type.typeName}.${m.name}`, file);
        if (type.kind === "message") for (const f of type.fields) this.bySymbol.set(`${type.typeName}.${f.name}`, file);
        if (type.kind === "enum") for (const v of type.values) this.bySymbol.set(`${type.typeName}.${v.name}`, file);
      }
      const pkg = file.proto.package;
      if (pkg) this.bySymbol.set(pkg, this.bySymbol.get(pkg) ?? file);
    };
    for (const s of services) add(s.file);
    for (const f of extraFiles) add(f);
  }

  /** The file and its transitive imports, each serialized once (imports first is not required). */
  closure(file: DescFile): Uint8Array[] {
    const seen = new Set<string>();
    const out: Uint8Array[] = [];
    const visit = (f: DescFile) => {
      if (seen.has(f.proto.name)) return;
      seen.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      for (const d of f.dependencies) visit(d);
    };
    visit(file);
    return out;
  }

  fileByName(name: string): DescFile | undefined {
    return this.files.get(name);
  }

  fileBySymbol(symbol: string): DescFile | undefined {
    return this.bySymbol.get(symbol.replace(/^\./, ""));
  }
}

/** Answers one reflection request (v1 message shapes). */
export function answer(index: DescriptorIndex, req: ServerReflectionRequest): ServerReflectionResponse {
  const base = { validHost: req.host, originalRequest: req };
  const notFound = (what: string) =>
    create(ServerReflectionResponseSchema, {
      ...base,
      messageResponse: { case: "errorResponse", value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` } },
    });
  const files = (file: DescFile | undefined, what: string) =>
    file
      ? create(ServerReflectionResponseSchema, {
          ...base,
          messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: index.closure(file) } },
        })
      : notFound(what);
  const r = req.messageRequest;
  switch (r.case) {
    case "listServices":
      return create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: { case: "listServicesResponse", value: { service: index.services.map((s) => ({ name: s.typeName })) } },
      });
    case "fileByFilename":
      return files(index.fileByName(r.value), `file ${r.value}`);
    case "fileContainingSymbol":
      return files(index.fileBySymbol(r.value), `symbol ${r.value}`);
    case "fileContainingExtension":
      return notFound(`extension ${r.value.extensionNumber} of ${r.value.containingType}`);
    case "allExtensionNumbersOfType": {
      const known = index.fileBySymbol(r.value) !== undefined;
      return known
        ? create(ServerReflectionResponseSchema, {
            ...base,
            messageResponse: { case: "allExtensionNumbersResponse", value: { baseTypeName: r.value, extensionNumber: [] } },
          })
        : notFound(`type ${r.value}`);
    }
    default:
      return create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: { case: "errorResponse", value: { errorCode: 3, errorMessage: "empty or unknown request" } },
      });
  }
}

/** grpc.reflection.v1.ServerReflection: a bidirectional stream, one answer per request. */
export function createReflectionV1Impl(index: DescriptorIndex): ServiceImpl<typeof ServerReflectionV1> {
  return {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield answer(index, req);
    },
  };
}

/**
 * grpc.reflection.v1alpha.ServerReflection: the same protocol under the older
 * name (grpcurl and older clients ask for it). Its messages are wire-identical
 * to v1, so requests and answers are translated through their bytes.
 */
export function createReflectionV1AlphaImpl(index: DescriptorIndex): ServiceImpl<typeof ServerReflectionV1Alpha> {
  return {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        const v1 = fromBinary(ServerReflectionRequestSchema, toBinary(AlphaRequestSchema, req));
        yield fromBinary(AlphaResponseSchema, toBinary(ServerReflectionResponseSchema, answer(index, v1)));
      }
    },
  };
}

export { ServerReflectionV1, ServerReflectionV1Alpha };
