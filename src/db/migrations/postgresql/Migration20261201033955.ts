import { Migration } from '@mikro-orm/migrations';

export class Migration20261201033955 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table "audience_tokens" ("id" varchar(64) not null, "session_id" varchar(64) not null, "resource" text not null, "key_id" varchar(64) not null, "access_ct" bytea not null, "token_type" varchar(64) not null, "scope" text not null, "expires_at" timestamptz(3) not null, "issued_at" timestamptz(3) not null, "updated_at" timestamptz(3) not null, constraint "audience_tokens_pkey" primary key ("id"));`);
    this.addSql(`create index "audience_tokens_session_idx" on "audience_tokens" ("session_id");`);

    this.addSql(`alter table "providers" add column "audience_tokens" varchar(16) not null default 'refresh', add column "exchange_target" varchar(16) not null default 'resource';`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "audience_tokens" cascade;`);

    this.addSql(`alter table "providers" drop column "audience_tokens", drop column "exchange_target";`);
  }

}
