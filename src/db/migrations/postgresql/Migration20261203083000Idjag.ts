import { Migration } from '@mikro-orm/migrations';

export class Migration20261203083000Idjag extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table "providers" add column "kind" varchar(32) not null default 'oauth', add column "enterprise_idp" varchar(64) null;`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "providers" drop column "kind", drop column "enterprise_idp";`);
  }

}
