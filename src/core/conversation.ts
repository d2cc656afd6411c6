/**
 * A conversation is everything said about one image in one platform thread. It is keyed by
 * the platform's thread id and holds enough to rebuild the model's state from scratch (image
 * digest + turns), so any bot process can serve any thread and a restart loses nothing; the
 * model's cached state is only an optimisation on top.
 */

export type Role = 'USER' | 'ASSISTANT' | 'VUSER';
export type TemplateName = 'v1' | 'v1_sq';

export interface Turn {
  role: Role;
  text: string;
}

export interface Conversation {
  /** Platform-scoped thread key, e.g. `discord:1234` (opaque to core). */
  id: string;
  /** sha256 of the image bytes; the image itself lives in the ImageStore. */
  imageDigest: string;
  template: TemplateName;
  turns: Turn[];
  /** The model's token ids of the conversation (image = -200), when known: rebuilding the
   * model state from them is exact, where re-tokenising the turns' text may not be. */
  tokens?: number[];
  /** User who started it; `openToAll` lets anyone in the thread continue it. */
  ownerId: string;
  openToAll: boolean;
  createdAt: number;
  updatedAt: number;
  /** Inference host that last held this conversation's cached state (scale-out affinity). */
  host?: string;
}

export interface ConversationStore {
  get(id: string): Promise<Conversation | undefined>;
  /** Saves and (re)starts the idle expiry. */
  save(conversation: Conversation): Promise<void>;
  delete(id: string): Promise<void>;
}

/** Image bytes by digest, so a conversation whose model state was evicted can be rebuilt. */
export interface ImageStore {
  get(digest: string): Promise<Uint8Array | undefined>;
  put(digest: string, bytes: Uint8Array): Promise<void>;
}

export function mayContinue(conversation: Conversation, userId: string): boolean {
  return conversation.openToAll || conversation.ownerId === userId;
}
