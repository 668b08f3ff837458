import type { MikroORM } from "@mikro-orm/core";
import type { NewEvent } from "../events/types.js";
import {
  AuthorizationStateSchema,
  LogoutTokenSchema,
  ProviderSchema,
  type AuthorizationStateRow,
  type ProviderRow,
} from "./provider-entity.js";
import { EventRepository } from "./event-repository.js";
import { asBuffer } from "./session-entity.js";
import { isUniqueViolation, runOn } from "./session-repository.js";

/** Another row already has this primary key. */
export class DuplicateKeyError extends Error {
  override name = "DuplicateKeyError";
  constructor(cause: unknown) {
    super("duplicate key", { cause });
  }
}

function providerEvent(kind: "provider.registered" | "provider.deleted", id: string, reason: string | null): NewEvent {
  return { kind, provider: id, userId: null, sessionId: null, reason };
}

function provider(row: ProviderRow | null): ProviderRow | null {
  if (!row) return null;
  row.clientSecretCt = asBuffer(row.clientSecretCt);
  row.registrationTokenCt = asBuffer(row.registrationTokenCt);
  row.allowInsecureHttp = Boolean(row.allowInsecureHttp);
  return row;
}

/** Runtime providers (RegisterProvider) in the database. */
export class ProviderRepository {
  constructor(
    private readonly orm: MikroORM,
    /** provider.registered and provider.deleted are appended in the same transaction as the row's change. */
    private readonly events: EventRepository = new EventRepository(orm),
  ) {}

  /** Inserts a provider (and its provider.registered event); DuplicateKeyError when the id is taken. */
  async insert(row: ProviderRow): Promise<void> {
    try {
      await this.events.transactional(async (tx) => {
        await tx.insert(ProviderSchema, row);
        return { result: undefined, events: [providerEvent("provider.registered", row.id, row.registration)] };
      });
    } catch (err) {
      if (isUniqueViolation(err)) throw new DuplicateKeyError(err);
      throw err;
    }
  }

  async list(): Promise<ProviderRow[]> {
    return runOn(this.orm, async (em) =>
      (await em.find(ProviderSchema, {}, { orderBy: { id: "asc" }, disableIdentityMap: true })).map((r) => provider(r) as ProviderRow),
    );
  }

  async find(id: string): Promise<ProviderRow | null> {
    return runOn(this.orm, async (em) => provider(await em.findOne(ProviderSchema, { id }, { disableIdentityMap: true })));
  }

  /** Deletes a provider (and appends provider.deleted); false when there was none. */
  async delete(id: string): Promise<boolean> {
    return this.events.transactional(async (tx) => {
      const deleted = (await tx.nativeDelete(ProviderSchema, { id })) === 1;
      return { result: deleted, events: deleted ? [providerEvent("provider.deleted", id, null)] : [] };
    });
  }

  /** Providers with ciphertexts under another key than `keyId` (for key rotation). */
  async listNotUnderKey(keyId: string): Promise<ProviderRow[]> {
    return runOn(this.orm, async (em) =>
      (await em.find(ProviderSchema, { keyId: { $ne: keyId } }, { disableIdentityMap: true })).map((r) => provider(r) as ProviderRow),
    );
  }

  /**
   * Claims the provider's registering again: moves its version on if it is
   * still at `version`; false when another write (another replica's claim)
   * came first.
   */
  async claim(id: string, version: number): Promise<boolean> {
    return runOn(this.orm, async (em) => (await em.nativeUpdate(ProviderSchema, { id, version }, { version: version + 1 })) === 1);
  }

  /**
   * Stores a client registered again if the provider is still at `version`
   * (a compare-and-set: one replica's registration wins); false when another
   * write came first.
   */
  async updateRegistration(
    id: string,
    version: number,
    fields: Pick<ProviderRow, "issuer" | "metadata" | "clientId" | "clientAuthMethod" | "keyId" | "clientSecretCt" | "registrationTokenCt">,
  ): Promise<boolean> {
    return runOn(this.orm, async (em) => (await em.nativeUpdate(ProviderSchema, { id, version }, { ...fields, version: version + 1 })) === 1);
  }

  /** Rewrites a provider's ciphertexts if it is still at `version`; false when another write came first. */
  async reseal(id: string, version: number, fields: Pick<ProviderRow, "keyId" | "clientSecretCt" | "registrationTokenCt">): Promise<boolean> {
    return runOn(this.orm, async (em) => (await em.nativeUpdate(ProviderSchema, { id, version }, { ...fields, version: version + 1 })) === 1);
  }
}

/** How a stored authorization state was found when a callback came back with it. */
export type StateLookup =
  | { found: "ok"; row: AuthorizationStateRow }
  | { found: "unknown" | "expired" | "used" };

/** Server-side authorization state (StartAuthorization) and seen logout tokens. */
export class AuthorizationRepository {
  constructor(private readonly orm: MikroORM) {}

  async insertState(row: AuthorizationStateRow): Promise<void> {
    await runOn(this.orm, (em) => em.insert(AuthorizationStateSchema, row));
  }

  /** Looks a state up without taking it, so its checks can run before its one use (takeState). */
  async findState(id: string, now: Date): Promise<StateLookup> {
    return runOn(this.orm, async (em) => {
      const row = await em.findOne(AuthorizationStateSchema, { id }, { disableIdentityMap: true });
      if (!row) return { found: "unknown" };
      if (row.usedAt !== null) return { found: "used" };
      if (row.expiresAt <= now) return { found: "expired" };
      row.payloadCt = asBuffer(row.payloadCt) as Buffer;
      return { found: "ok", row };
    });
  }

  /**
   * Takes a state for its one use: marks it used with a conditional update,
   * so two callbacks with the same state cannot both succeed. False when it
   * was taken already or has expired.
   */
  async takeState(id: string, now: Date): Promise<boolean> {
    return runOn(this.orm, async (em) => (await em.nativeUpdate(AuthorizationStateSchema, { id, usedAt: null, expiresAt: { $gt: now } }, { usedAt: now })) === 1);
  }

  /** Deletes states that expired before `before`, at most `limit`; returns how many. */
  async sweepStates(before: Date, limit: number): Promise<number> {
    return runOn(this.orm, async (em) => {
      const rows = await em.find(AuthorizationStateSchema, { expiresAt: { $lt: before } }, { fields: ["id"], limit, disableIdentityMap: true });
      if (rows.length === 0) return 0;
      return em.nativeDelete(AuthorizationStateSchema, { id: { $in: rows.map((r) => r.id) } });
    });
  }

  /** Forgets logout tokens that expired before `before`; returns how many. */
  async sweepLogoutTokens(before: Date): Promise<number> {
    return runOn(this.orm, (em) => em.nativeDelete(LogoutTokenSchema, { expiresAt: { $lt: before } }));
  }
}
