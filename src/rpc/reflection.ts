import { toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";

/**
 * The files of `services` and `extraFiles` with every import, imports first,
 * each once: what a FileDescriptorSet must hold to be self-contained.
 */
export function fileClosure(services: DescService[], extraFiles: DescFile[] = []): DescFile[] {
  const seen = new Set<string>();
  const out: DescFile[] = [];
  const visit = (file: DescFile) => {
    if (seen.has(file.proto.name)) return;
    seen.add(file.proto.name);
    for (const dep of file.dependencies) visit(dep);
    out.push(file);
  };
  for (const s of services) visit(s.file);
  for (const f of extraFiles) visit(f);
  return out;
}

/**
 * gRPC server reflection (v1 and v1alpha) from `@grpc/reflection`, describing
 * the served services with the descriptors generated into gen/: no .proto
 * file is read at run time. `extraFiles` are described too (error details,
 * so that tools can decode ErrorInfo).
 *
 * `ReflectionService` takes a @grpc/proto-loader package definition, of
 * which it reads only each entry's `fileDescriptorProtos`. Loading the files
 * through proto-loader (`loadFileDescriptorSetFromBuffer`) would re-encode
 * them through protobufjs, which drops their imports; so the definition is
 * built here from the exact bytes protobuf-es holds.
 */
export function createReflection(services: DescService[], extraFiles: DescFile[] = []): ReflectionService {
  const fileDescriptorProtos = fileClosure(services, extraFiles).map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)));
  const pkg: PackageDefinition = {};
  for (const s of services) {
    pkg[s.typeName] = { format: "Protocol Buffer 3 FileDescriptorProto", type: {}, fileDescriptorProtos } as unknown as PackageDefinition[string];
  }
  return new ReflectionService(pkg, { services: services.map((s) => s.typeName) });
}
