import { Migration } from '@mikro-orm/migrations';

/**
 * Keep-alive and background refresh at scale (issue 20): each session's due times, written with each
 * token, and the indexes the refresher's batch claims use (sessions due; live leases per provider).
 * Existing rows keep null due times: the refresher falls back to the access token's expiry and the
 * last token write until their next refresh schedules them.
 */
export class Migration20261203140200_keepalive extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table "sessions" add column "refresh_at" timestamptz(3) null, add column "keep_alive_at" timestamptz(3) null;`);
    this.addSql(`create index "sessions_status_refresh_at_idx" on "sessions" ("status", "refresh_at");`);
    this.addSql(`create index "sessions_status_keep_alive_at_idx" on "sessions" ("status", "keep_alive_at");`);
    this.addSql(`create index "sessions_provider_lease_until_idx" on "sessions" ("provider", "lease_until");`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index "sessions_status_refresh_at_idx";`);
    this.addSql(`drop index "sessions_status_keep_alive_at_idx";`);
    this.addSql(`drop index "sessions_provider_lease_until_idx";`);
    this.addSql(`alter table "sessions" drop column "refresh_at", drop column "keep_alive_at";`);
  }

}
