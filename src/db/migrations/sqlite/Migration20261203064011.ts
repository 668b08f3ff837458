import { Migration } from '@mikro-orm/migrations';

export class Migration20261203064011 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table \`providers\` add column \`refresh_scopes\` text not null default '[]';`);
  }

}
