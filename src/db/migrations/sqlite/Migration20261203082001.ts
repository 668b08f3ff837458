import { Migration } from '@mikro-orm/migrations';

// Issue 19 (CIMD): the signing keys of the service's client (private_key_jwt).
export class Migration20261203082001 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table \`client_signing_keys\` (\`kid\` text not null, \`key_id\` text not null, \`private_ct\` blob not null, \`public_jwk\` text not null, \`created_at\` datetime not null, \`version\` integer not null, primary key (\`kid\`));`);
  }

}
