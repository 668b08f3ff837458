import { Migration } from '@mikro-orm/migrations';

export class Migration20261126170811 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table "sessions" ("id" varchar(64) not null, "user_id" varchar(256) not null, "provider" varchar(64) not null, "status" varchar(16) not null, "key_id" varchar(64) not null, "access_ct" bytea not null, "refresh_ct" bytea null, "id_ct" bytea null, "token_type" varchar(64) not null, "scope" text not null, "access_expires_at" timestamptz(3) not null, "access_issued_at" timestamptz(3) not null, "id_expires_at" timestamptz(3) null, "refresh_expires_at" timestamptz(3) null, "created_at" timestamptz(3) not null, "updated_at" timestamptz(3) not null, "last_used_at" timestamptz(3) not null, "version" int not null, "lease_owner" varchar(128) null, "lease_until" timestamptz(3) null, "last_error_code" varchar(64) null, "last_error_at" timestamptz(3) null, "reauth_reason" varchar(64) null, constraint "sessions_pkey" primary key ("id"));`);
    this.addSql(`create index "sessions_user_provider_created_idx" on "sessions" ("user_id", "provider", "created_at");`);
    this.addSql(`create index "sessions_status_access_expires_idx" on "sessions" ("status", "access_expires_at");`);
  }

}
