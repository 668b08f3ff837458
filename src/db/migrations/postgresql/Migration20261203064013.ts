import { Migration } from '@mikro-orm/migrations';

export class Migration20261203064013 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table "providers" add column "refresh_scopes" text not null default '[]';`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "providers" drop column "refresh_scopes";`);
  }

}
