import { Migration } from '@mikro-orm/migrations';

// Issue 19 (CIMD): the signing keys of the service's client (private_key_jwt).
export class Migration20261203082002 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table "client_signing_keys" ("kid" varchar(64) not null, "key_id" varchar(64) not null, "private_ct" bytea not null, "public_jwk" text not null, "created_at" timestamptz(3) not null, "version" int not null, constraint "client_signing_keys_pkey" primary key ("kid"));`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "client_signing_keys" cascade;`);
  }

}
