import { Migration } from '@mikro-orm/migrations';

/** Connection health (issue 20): the event outbox, its purge horizon, ended sessions kept without tokens, and each session's run of refresh failures. */
export class Migration20261203140000_events extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table "events" ("seq" bigserial primary key, "id" varchar(40) not null, "kind" varchar(48) not null, "provider" varchar(64) null, "user_id" varchar(256) null, "session_id" varchar(64) null, "reason" varchar(64) null, "detail" text null, "created_at" timestamptz(3) not null);`);
    this.addSql(`alter table "events" add constraint "events_id_unique" unique ("id");`);
    this.addSql(`create index "events_created_idx" on "events" ("created_at");`);

    this.addSql(`create table "event_horizon" ("id" int not null, "through_seq" bigint not null, constraint "event_horizon_pkey" primary key ("id"));`);
    this.addSql(`insert into "event_horizon" ("id", "through_seq") values (1, 0);`);

    this.addSql(`create table "ended_sessions" ("id" varchar(64) not null, "user_id" varchar(256) not null, "provider" varchar(64) not null, "status" varchar(16) not null, "reason" varchar(64) not null, "scope" text not null, "resources" text null, "created_at" timestamptz(3) not null, "last_used_at" timestamptz(3) not null, "ended_at" timestamptz(3) not null, constraint "ended_sessions_pkey" primary key ("id"));`);
    this.addSql(`create index "ended_sessions_user_provider_idx" on "ended_sessions" ("user_id", "provider", "ended_at");`);
    this.addSql(`create index "ended_sessions_ended_idx" on "ended_sessions" ("ended_at");`);

    this.addSql(`alter table "sessions" add column "reauth_at" timestamptz(3) null, add column "refresh_failures" int not null default 0, add column "failing_since" timestamptz(3) null;`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "events" cascade;`);
    this.addSql(`drop table if exists "event_horizon" cascade;`);
    this.addSql(`drop table if exists "ended_sessions" cascade;`);
    this.addSql(`alter table "sessions" drop column "reauth_at", drop column "refresh_failures", drop column "failing_since";`);
  }

}
