"""Replication lag, the relation: how a target relates to a source (a streaming
standby of it, a standby fed from elsewhere or cut off, a logical subscriber, or none of
these), from the facts each server gives. No I/O: the facts come from
:mod:`replverify.lag.probe`."""

from __future__ import annotations

import dataclasses

from replverify.lag.model import (
    Relation,
    ReplicationSlot,
    ReplicationState,
    SourceFacts,
    Subscription,
    TargetFacts,
    WalSender,
)


def _match_sender(
    source: SourceFacts, target: TargetFacts
) -> tuple[WalSender | None, ReplicationSlot | None, bool]:
    """The source's WAL sender feeding the target, its slot, and whether the target's
    receiver names the source's address."""
    rcv = target.receiver
    if rcv is None:
        return None, None, False
    slot = next((s for s in source.slots if rcv.slot_name and s.name == rcv.slot_name), None)
    if slot is not None and slot.active_pid is not None:
        sender = next((w for w in source.senders if w.pid == slot.active_pid), None)
        if sender is not None:
            return sender, slot, True
    host = rcv.sender_host or ""
    names_source = (
        rcv.sender_port is not None
        and rcv.sender_port == source.port
        and (host.startswith("/") or host in source.addresses or not source.addresses)
    )
    if not names_source:
        return None, None, False
    name = target.cluster_name
    by_name = [w for w in source.senders if name and w.application_name == name]
    candidates = by_name or (list(source.senders) if len(source.senders) == 1 else [])
    return (candidates[0] if len(candidates) == 1 else None), slot, True


def classify(source: SourceFacts, target: TargetFacts) -> ReplicationState:
    """How the target relates to the source: a streaming standby of it, a standby of the
    same cluster fed from elsewhere or cut off, or not a physical standby at all."""

    def state(
        relation: Relation,
        description: str,
        sender: WalSender | None = None,
        slot: ReplicationSlot | None = None,
    ) -> ReplicationState:
        return ReplicationState(
            relation,
            description,
            source_system_id=source.system_id,
            target_system_id=target.system_id,
            source_in_recovery=source.in_recovery,
            target_in_recovery=target.in_recovery,
            sender=sender,
            slot=slot,
            receiver=target.receiver,
            replay_paused=target.replay_paused,
        )

    if not target.in_recovery:
        sub, logical_slot = match_subscription(source, target)
        if sub is not None and logical_slot is not None:
            sender = next((w for w in source.senders if w.pid == logical_slot.active_pid), None)
            return dataclasses.replace(
                state("subscriber", _subscriber_description(sub, logical_slot), sender),
                slot=logical_slot,
                subscription=sub,
            )
        return state(
            "not_standby",
            "the target is not a physical standby: it is not in recovery (a primary, "
            "or a promoted standby)",
        )
    if source.system_id and target.system_id and source.system_id != target.system_id:
        return state(
            "other_cluster",
            f"the target is a standby of another cluster: system identifier "
            f"{target.system_id}, the source's is {source.system_id}",
        )
    unsure = "" if source.system_id and target.system_id else " (system identifiers unknown)"
    rcv = target.receiver
    if rcv is None or rcv.status not in ("streaming", None):
        what = f"WAL receiver {rcv.status}" if rcv else "no WAL receiver"
        return state(
            "disconnected",
            f"the target is a standby of the source's cluster{unsure} but is not receiving "
            f"WAL ({what}): it falls behind as the source writes",
        )
    sender, slot, names_source = _match_sender(source, target)
    if sender is None and not names_source:
        upstream = f"{rcv.sender_host}:{rcv.sender_port}" if rcv.sender_host else "elsewhere"
        return state(
            "standby",
            f"the target is a standby of the source's cluster{unsure}, streaming from "
            f"{upstream}, which is not recognisably the source (a cascading standby, or the "
            "source under another address); lag is still measured against the source's WAL",
            slot=slot,
        )
    via = f" via slot {slot.name}" if slot else " (no replication slot)"
    seen = (
        f"; the source's WAL sender {sender.application_name!r} is {sender.state}, "
        f"{sender.sync_state}"
        if sender
        else "; no matching row in the source's pg_stat_replication"
    )
    return state(
        "streaming",
        f"the target is a streaming standby of the source{unsure}{via}{seen}",
        sender=sender,
        slot=slot,
    )


def _subscriber_description(sub: Subscription, slot: ReplicationSlot) -> str:
    if not sub.enabled:
        state = (
            "is disabled (ALTER SUBSCRIPTION ... DISABLE): the target falls behind as the "
            "source writes"
        )
    elif sub.worker_pid is None:
        state = "is enabled but no apply worker runs (see the target's log): it falls behind"
    else:
        state = f"is enabled, its apply worker (pid {sub.worker_pid}) running"
    return (
        f"the target is a logical replication subscriber of the source: subscription "
        f"{sub.name!r} {state}; logical slot {slot.name!r} on the source is "
        f"{'active' if slot.active else 'inactive'}"
    )


def match_subscription(
    source: SourceFacts, target: TargetFacts
) -> tuple[Subscription | None, ReplicationSlot | None]:
    """The target's subscription to the source and the source's logical slot for it: the
    slot of the subscription's name, decoding the source's database, and (when the
    target lets us read ``subconninfo``) a connection to the source's port."""
    for sub in sorted(target.subscriptions, key=lambda x: not x.enabled):
        slot = next(
            (
                s
                for s in source.slots
                if s.type == "logical" and sub.slot_name and s.name == sub.slot_name
            ),
            None,
        )
        if slot is None:
            continue
        if source.database and slot.database and slot.database != source.database:
            continue
        if sub.port is not None and source.port is not None and sub.port != source.port:
            continue
        return sub, slot
    return None, None
