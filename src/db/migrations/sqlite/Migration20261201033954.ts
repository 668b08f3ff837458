import { Migration } from '@mikro-orm/migrations';

export class Migration20261201033954 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table \`audience_tokens\` (\`id\` text not null, \`session_id\` text not null, \`resource\` text not null, \`key_id\` text not null, \`access_ct\` blob not null, \`token_type\` text not null, \`scope\` text not null, \`expires_at\` datetime not null, \`issued_at\` datetime not null, \`updated_at\` datetime not null, primary key (\`id\`));`);
    this.addSql(`create index \`audience_tokens_session_idx\` on \`audience_tokens\` (\`session_id\`);`);

    this.addSql(`alter table \`providers\` add column \`audience_tokens\` text not null default 'refresh';`);
    this.addSql(`alter table \`providers\` add column \`exchange_target\` text not null default 'resource';`);
  }

}
