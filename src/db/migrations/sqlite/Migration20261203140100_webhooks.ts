import { Migration } from '@mikro-orm/migrations';

/** Webhooks (issue 20 item 4): deliveries fed from the events outbox, and each webhook's cursor over it. */
export class Migration20261203140100_webhooks extends Migration {

  override async up(): Promise<void> {
    this.addSql(`create table \`webhook_deliveries\` (\`id\` text not null, \`webhook_id\` text not null, \`event_id\` text not null, \`event_type\` text not null, \`provider\` text null, \`payload\` text not null, \`state\` text not null, \`attempts\` integer not null, \`created_at\` datetime not null, \`event_at\` datetime not null, \`window_start\` datetime not null, \`next_attempt_at\` datetime not null, \`lease_owner\` text null, \`lease_until\` datetime null, \`last_status\` integer null, \`last_error\` text null, \`delivered_at\` datetime null, \`dead_at\` datetime null, primary key (\`id\`));`);
    this.addSql(`create unique index \`webhook_deliveries_event_unique\` on \`webhook_deliveries\` (\`webhook_id\`, \`event_id\`);`);
    this.addSql(`create index \`webhook_deliveries_due_idx\` on \`webhook_deliveries\` (\`state\`, \`next_attempt_at\`);`);
    this.addSql(`create table \`webhook_cursors\` (\`webhook_id\` text not null, \`position\` text not null, \`updated_at\` datetime not null, primary key (\`webhook_id\`));`);
  }

}
