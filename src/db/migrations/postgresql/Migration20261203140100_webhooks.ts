import { Migration } from '@mikro-orm/migrations';

/** Webhooks (issue 20 item 4): deliveries fed from the events outbox, and each webhook's cursor over it. */
export class Migration20261203140100_webhooks extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table "webhook_deliveries" ("id" varchar(64) not null, "webhook_id" varchar(64) not null, "event_id" varchar(64) not null, "event_type" varchar(64) not null, "provider" varchar(64) null, "payload" text not null, "state" varchar(16) not null, "attempts" int not null, "created_at" timestamptz(3) not null, "event_at" timestamptz(3) not null, "window_start" timestamptz(3) not null, "next_attempt_at" timestamptz(3) not null, "lease_owner" varchar(128) null, "lease_until" timestamptz(3) null, "last_status" int null, "last_error" varchar(64) null, "delivered_at" timestamptz(3) null, "dead_at" timestamptz(3) null, constraint "webhook_deliveries_pkey" primary key ("id"));`);
    this.addSql(`alter table "webhook_deliveries" add constraint "webhook_deliveries_event_unique" unique ("webhook_id", "event_id");`);
    this.addSql(`create index "webhook_deliveries_due_idx" on "webhook_deliveries" ("state", "next_attempt_at");`);
    this.addSql(`create table "webhook_cursors" ("webhook_id" varchar(64) not null, "position" varchar(64) not null, "updated_at" timestamptz(3) not null, constraint "webhook_cursors_pkey" primary key ("webhook_id"));`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "webhook_deliveries" cascade;`);
    this.addSql(`drop table if exists "webhook_cursors" cascade;`);
  }

}
