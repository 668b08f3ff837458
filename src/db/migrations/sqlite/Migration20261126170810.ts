import { Migration } from '@mikro-orm/migrations';

export class Migration20261126170810 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table \`sessions\` (\`id\` text not null, \`user_id\` text not null, \`provider\` text not null, \`status\` text not null, \`key_id\` text not null, \`access_ct\` blob not null, \`refresh_ct\` blob null, \`id_ct\` blob null, \`token_type\` text not null, \`scope\` text not null, \`access_expires_at\` datetime not null, \`access_issued_at\` datetime not null, \`id_expires_at\` datetime null, \`refresh_expires_at\` datetime null, \`created_at\` datetime not null, \`updated_at\` datetime not null, \`last_used_at\` datetime not null, \`version\` integer not null, \`lease_owner\` text null, \`lease_until\` datetime null, \`last_error_code\` text null, \`last_error_at\` datetime null, \`reauth_reason\` text null, primary key (\`id\`));`);
    this.addSql(`create index \`sessions_user_provider_created_idx\` on \`sessions\` (\`user_id\`, \`provider\`, \`created_at\`);`);
    this.addSql(`create index \`sessions_status_access_expires_idx\` on \`sessions\` (\`status\`, \`access_expires_at\`);`);
  }

}
