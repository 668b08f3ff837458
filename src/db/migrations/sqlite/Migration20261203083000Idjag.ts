import { Migration } from '@mikro-orm/migrations';

export class Migration20261203083000Idjag extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table \`providers\` add column \`kind\` text not null default 'oauth';`);
    this.addSql(`alter table \`providers\` add column \`enterprise_idp\` text null;`);
  }

}
