// The overview poller every screen shares: snapshots of /admin/console/overview, newest last.

import * as api from "./api.js";
import { announce } from "./ui.js";

export const POLL_MS = 3000;
const KEEP = 120; // 6 minutes at one snapshot per 3 s

export const feed = { snapshots: [], listeners: new Set(), timer: null };

async function poll() {
  try {
    const snap = await api.get("/admin/console/overview");
    feed.snapshots.push(snap);
    if (feed.snapshots.length > KEEP) feed.snapshots.shift();
    for (const listener of feed.listeners) listener(snap);
  } catch (err) {
    if (err.status !== 401) {
      console.error(err.stack || err);
      announce(`Overview refresh failed: ${err.message}`, "error");
    }
  }
}

export function latest() {
  return feed.snapshots[feed.snapshots.length - 1] || null;
}

export async function refreshNow() {
  await poll();
  return latest();
}

export function startPolling() {
  if (feed.timer) return;
  poll();
  feed.timer = setInterval(poll, POLL_MS);
}

export function stopPolling() {
  clearInterval(feed.timer);
  feed.timer = null;
  feed.snapshots.length = 0;
}
