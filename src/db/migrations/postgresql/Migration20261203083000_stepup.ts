import { Migration } from '@mikro-orm/migrations';

/** Scopes and step-up (issue 19): what a protected resource's challenge and metadata said, and each session's step-ups of the last hour. */
export class Migration20261203083000_stepup extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table "providers" add column "challenge_scopes" text not null default '[]';`);
    this.addSql(`alter table "providers" add column "scopes_supported" text not null default '[]';`);
    this.addSql(`alter table "providers" add column "resource_metadata_url" text null;`);
    this.addSql(`alter table "sessions" add column "step_ups" text null;`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "providers" drop column "challenge_scopes";`);
    this.addSql(`alter table "providers" drop column "scopes_supported";`);
    this.addSql(`alter table "providers" drop column "resource_metadata_url";`);
    this.addSql(`alter table "sessions" drop column "step_ups";`);
  }

}
