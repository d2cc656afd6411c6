/**
 * Allow/deny lists. A deny entry always wins; a non-empty allow list of a kind admits only
 * its members (a request matches if any of its ids of that kind is listed).
 */

export interface AccessLists {
  users?: { allow?: string[]; deny?: string[] };
  roles?: { allow?: string[]; deny?: string[] };
  channels?: { allow?: string[]; deny?: string[] };
  servers?: { allow?: string[]; deny?: string[] };
}

export interface Requester {
  userId: string;
  roleIds?: string[];
  /** The channel and, for threads, its parent channel. */
  channelIds?: string[];
  serverId?: string;
}

export type AccessDecision = { allowed: true } | { allowed: false; reason: 'user' | 'role' | 'channel' | 'server' };

export function checkAccess(lists: AccessLists, who: Requester): AccessDecision {
  const kinds: Array<[keyof AccessLists, 'user' | 'role' | 'channel' | 'server', string[]]> = [
    ['users', 'user', [who.userId]],
    ['roles', 'role', who.roleIds ?? []],
    ['channels', 'channel', who.channelIds ?? []],
    ['servers', 'server', who.serverId ? [who.serverId] : []],
  ];
  for (const [key, reason, ids] of kinds) {
    const list = lists[key];
    if (!list) continue;
    if (list.deny?.some((id) => ids.includes(id))) return { allowed: false, reason };
    if (list.allow && list.allow.length > 0 && !list.allow.some((id) => ids.includes(id))) {
      return { allowed: false, reason };
    }
  }
  return { allowed: true };
}
