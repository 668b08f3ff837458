import { Migration } from '@mikro-orm/migrations';

/** Connection health (issue 20): the event outbox, its purge horizon, ended sessions kept without tokens, and each session's run of refresh failures. */
export class Migration20261203140000_events extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table \`events\` (\`seq\` integer not null primary key autoincrement, \`id\` text not null, \`kind\` text not null, \`provider\` text null, \`user_id\` text null, \`session_id\` text null, \`reason\` text null, \`detail\` text null, \`created_at\` datetime not null);`);
    this.addSql(`create unique index \`events_id_unique\` on \`events\` (\`id\`);`);
    this.addSql(`create index \`events_created_idx\` on \`events\` (\`created_at\`);`);

    this.addSql(`create table \`event_horizon\` (\`id\` integer not null, \`through_seq\` bigint not null, primary key (\`id\`));`);
    this.addSql(`insert into \`event_horizon\` (\`id\`, \`through_seq\`) values (1, 0);`);

    this.addSql(`create table \`ended_sessions\` (\`id\` text not null, \`user_id\` text not null, \`provider\` text not null, \`status\` text not null, \`reason\` text not null, \`scope\` text not null, \`resources\` text null, \`created_at\` datetime not null, \`last_used_at\` datetime not null, \`ended_at\` datetime not null, primary key (\`id\`));`);
    this.addSql(`create index \`ended_sessions_user_provider_idx\` on \`ended_sessions\` (\`user_id\`, \`provider\`, \`ended_at\`);`);
    this.addSql(`create index \`ended_sessions_ended_idx\` on \`ended_sessions\` (\`ended_at\`);`);

    this.addSql(`alter table \`sessions\` add column \`reauth_at\` datetime null;`);
    this.addSql(`alter table \`sessions\` add column \`refresh_failures\` integer not null default 0;`);
    this.addSql(`alter table \`sessions\` add column \`failing_since\` datetime null;`);
  }

}
