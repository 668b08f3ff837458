import { Migration } from '@mikro-orm/migrations';

export class Migration20261201031018 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table "authorization_states" ("id" varchar(64) not null, "user_id" varchar(256) not null, "provider" varchar(64) not null, "redirect_uri" text not null, "key_id" varchar(64) not null, "payload_ct" bytea not null, "created_at" timestamptz(3) not null, "expires_at" timestamptz(3) not null, "used_at" timestamptz(3) null, constraint "authorization_states_pkey" primary key ("id"));`);
    this.addSql(`create index "authorization_states_expires_idx" on "authorization_states" ("expires_at");`);

    this.addSql(`create table "logout_tokens" ("id" varchar(64) not null, "provider" varchar(64) not null, "expires_at" timestamptz(3) not null, constraint "logout_tokens_pkey" primary key ("id"));`);
    this.addSql(`create index "logout_tokens_expires_idx" on "logout_tokens" ("expires_at");`);

    this.addSql(`create table "providers" ("id" varchar(64) not null, "issuer" text not null, "resource_url" text null, "default_resource" text null, "client_id" varchar(255) not null, "client_auth_method" varchar(32) not null, "registration" varchar(16) not null, "key_id" varchar(64) not null, "client_secret_ct" bytea null, "registration_token_ct" bytea null, "metadata" text not null, "redirect_uris" text not null, "scopes" text not null, "allow_insecure_http" boolean not null, "created_at" timestamptz(3) not null, "version" int not null, constraint "providers_pkey" primary key ("id"));`);

    this.addSql(`alter table "sessions" add column "subject" varchar(255) null, add column "sid" varchar(255) null, add column "resources" text null;`);
    this.addSql(`create index "sessions_provider_sid_idx" on "sessions" ("provider", "sid");`);
    this.addSql(`create index "sessions_provider_subject_idx" on "sessions" ("provider", "subject");`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "authorization_states" cascade;`);

    this.addSql(`drop table if exists "logout_tokens" cascade;`);

    this.addSql(`drop table if exists "providers" cascade;`);

    this.addSql(`drop index "sessions_provider_sid_idx";`);
    this.addSql(`drop index "sessions_provider_subject_idx";`);
    this.addSql(`alter table "sessions" drop column "subject", drop column "sid", drop column "resources";`);
  }

}
