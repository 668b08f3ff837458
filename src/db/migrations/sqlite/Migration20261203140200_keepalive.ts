import { Migration } from '@mikro-orm/migrations';

/**
 * Keep-alive and background refresh at scale (issue 20): each session's due times, written with each
 * token, and the indexes the refresher's batch claims use (sessions due; live leases per provider).
 */
export class Migration20261203140200_keepalive extends Migration {

  override async up(): Promise<void> {
    this.addSql(`alter table \`sessions\` add column \`refresh_at\` datetime null;`);
    this.addSql(`alter table \`sessions\` add column \`keep_alive_at\` datetime null;`);
    this.addSql(`create index \`sessions_status_refresh_at_idx\` on \`sessions\` (\`status\`, \`refresh_at\`);`);
    this.addSql(`create index \`sessions_status_keep_alive_at_idx\` on \`sessions\` (\`status\`, \`keep_alive_at\`);`);
    this.addSql(`create index \`sessions_provider_lease_until_idx\` on \`sessions\` (\`provider\`, \`lease_until\`);`);
  }

}
