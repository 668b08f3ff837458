/** Something start-up opened and shutdown closes. */
export interface Closeable {
  close(): Promise<void> | void;
}

/**
 * Closes `parts` last first, one at a time. Each part is closed even when
 * one closed before it failed; the first failure is thrown once all have
 * been tried. A part that closes synchronously is not awaited, so the next
 * one starts closing at once.
 */
export async function closeInReverse(parts: readonly Closeable[]): Promise<void> {
  let failure: { err: unknown } | undefined;
  for (const part of [...parts].reverse()) {
    try {
      const closing = part.close();
      if (closing) await closing;
    } catch (err) {
      failure ??= { err };
    }
  }
  if (failure) throw failure.err;
}
