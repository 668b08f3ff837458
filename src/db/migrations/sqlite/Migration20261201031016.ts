import { Migration } from '@mikro-orm/migrations';

export class Migration20261201031016 extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table \`authorization_states\` (\`id\` text not null, \`user_id\` text not null, \`provider\` text not null, \`redirect_uri\` text not null, \`key_id\` text not null, \`payload_ct\` blob not null, \`created_at\` datetime not null, \`expires_at\` datetime not null, \`used_at\` datetime null, primary key (\`id\`));`);
    this.addSql(`create index \`authorization_states_expires_idx\` on \`authorization_states\` (\`expires_at\`);`);

    this.addSql(`create table \`logout_tokens\` (\`id\` text not null, \`provider\` text not null, \`expires_at\` datetime not null, primary key (\`id\`));`);
    this.addSql(`create index \`logout_tokens_expires_idx\` on \`logout_tokens\` (\`expires_at\`);`);

    this.addSql(`create table \`providers\` (\`id\` text not null, \`issuer\` text not null, \`resource_url\` text null, \`default_resource\` text null, \`client_id\` text not null, \`client_auth_method\` text not null, \`registration\` text not null, \`key_id\` text not null, \`client_secret_ct\` blob null, \`registration_token_ct\` blob null, \`metadata\` text not null, \`redirect_uris\` text not null, \`scopes\` text not null, \`allow_insecure_http\` integer not null, \`created_at\` datetime not null, \`version\` integer not null, primary key (\`id\`));`);

    this.addSql(`alter table \`sessions\` add column \`subject\` text null;`);
    this.addSql(`alter table \`sessions\` add column \`sid\` text null;`);
    this.addSql(`alter table \`sessions\` add column \`resources\` text null;`);
    this.addSql(`create index \`sessions_provider_sid_idx\` on \`sessions\` (\`provider\`, \`sid\`);`);
    this.addSql(`create index \`sessions_provider_subject_idx\` on \`sessions\` (\`provider\`, \`subject\`);`);
  }

}
