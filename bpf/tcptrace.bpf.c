// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcptrace: follow TCP state changes and correlate the peer's FIN
 * (ESTABLISHED -> CLOSE_WAIT) with the application's close. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"

#define AF_INET 2
#define AF_INET6 10
#define SEND_SHUTDOWN 2
#define PF_EXITING 0x00000004 /* task_struct.flags: the task is exiting */
#define ROOT_CGROUP_ID 1 /* kernfs id of the cgroup v2 root */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space before load. */
const volatile __u8 mode = MODE_CLOSEWAIT;
const volatile bool filter_ports = false;
/* bpf_get_socket_cookie is usable from this program type (tp_btf on >= 5.12).
 * When false the call is dead code the verifier prunes. */
const volatile bool use_cookie = false;
/* bpf_get_current_task_btf is usable (tp_btf on >= 5.11). */
const volatile bool use_task_btf = false;
/* 0: the kernel's adaptive wake-up. Otherwise submit without waking the
 * reader, which polls on a timer, unless it lags by wakeup_bytes or more;
 * then wake it once per wakeup_step bytes produced (a power of two), not per
 * event: when the reader is late, an interrupt per event would make the
 * producing CPUs pay most. */
const volatile __u64 wakeup_bytes = 0;
const volatile __u64 wakeup_step = 0;
/* closewait mode: send a record for every socket entering and leaving
 * CLOSE_WAIT. Otherwise only what user space may report: sockets that did
 * not fit the table, aborts, and closes at least emit_floor_ns after the FIN
 * (the stuck threshold, or a lower latency floor). The rest is counted in
 * the aggregates and never leaves the kernel. */
const volatile bool emit_all = true;
const volatile __u64 emit_floor_ns = 0;
/* Filters on entering CLOSE_WAIT besides the ports: a network namespace
 * inode, and a cgroup v2 id with its level (the socket's cgroup or one of
 * its descendants matches). 0 means no filter. */
const volatile __u32 filter_netns = 0;
const volatile __u64 filter_cgroup_id = 0;
const volatile __u32 filter_cgroup_level = 0;
/* Set by user space once the tcp_destroy_sock program is attached: a
 * socket the peer resets in CLOSE_WAIT while the application holds it is
 * then followed until the application closes its descriptor, which is the
 * application's close (a prompt server's reply can meet the closed
 * client's reset). Without it such a reset is an abort. */
volatile __u32 follow_resets = 0;
/* Sockets so followed now: the tcp_destroy_sock program, which runs for
 * every TCP socket's end, returns at once while there are none. */
__u64 reset_held = 0;

/* accept() failures not counted because accept_fails was full, and
 * accept() calls not followed because accept_fd was. */
__u64 accept_fails_lost = 0;
__u64 accept_untracked = 0;

/* An event's footprint in the ring: an 8-byte header, 8-byte aligned. */
#define RINGBUF_RECORD_BYTES ((sizeof(struct event) + 8 + 7) / 8 * 8)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Sockets in CLOSE_WAIT, keyed by kernel address. Not preallocated, so
 * memory follows the number of sockets actually stuck; user space switches
 * to preallocation for classic tracepoints, which must not allocate before
 * Linux 6.1. Size set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct cw_entry);
} closewait SEC(".maps");

/* Counts and FIN-to-close histograms by socket cgroup, service port and
 * direction. Preallocated (the classic tracepoint must not allocate) and
 * bounded: a key that does not fit is counted under the DIR_OVERFLOW key,
 * which user space inserts before attaching. Size set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct agg_key);
	__type(value, struct agg_val);
} aggregates SEC(".maps");

/* Sockets seen entering CLOSE_WAIT when the closewait table was full, so
 * that a listing does not take them for sockets that predate tcptrace. LRU:
 * at worst a socket is reported twice, never lost. Size set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} cw_overflow SEC(".maps");

/* Parameters and results of the scan iterator; one entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_ctl);
} scan_control SEC(".maps");

/* --port filter: bit p set for each port p wanted as local or remote port.
 * Read-only data, so a test is two loads where a hash lookup is a helper call. */
const volatile __u64 port_bits[65536 / 64] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The listener's descriptor of each thread in accept()/accept4(), by
 * pid_tgid, from the syscall's entry to its exit: only the exit knows
 * whether it failed, only the entry which listener it was. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __s32);
} accept_fd SEC(".maps");

/* accept() failures for want of a descriptor, per process, listener and
 * reason. Never deleted by the kernel: counters for the metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct accept_key);
	__type(value, struct accept_val);
} accept_fails SEC(".maps");

/* Keep the record types in the BTF so bpf2go can generate their Go types. */
const struct event *unused_event __attribute__((unused));
const struct agg_key *unused_agg_key __attribute__((unused));
const struct agg_val *unused_agg_val __attribute__((unused));
const struct scan_rec *unused_scan_rec __attribute__((unused));
const enum event_xflag *unused_event_xflag __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));
const enum accept_reason *unused_accept_reason __attribute__((unused));

/* RD reads a socket field. The tp_btf and iterator programs get a typed
 * pointer and load through it directly; the classic tracepoint gets a plain
 * address and must use bpf_probe_read_kernel, a helper call per field. btf
 * is a literal at each program's entry, so the other branch is compiled out. */
#define RD(btf, direct, probed) ((btf) ? (direct) : (probed))

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);

	/* Per-CPU slot, and the kernel never nests this program on one CPU. */
	if (v)
		(*v)++;
}

/* The local port. On the way to CLOSE the kernel releases the bound port
 * (skc_num = 0) before the tracepoint fires, so that transition reads
 * inet_sport, with a helper call: the typed pointer is a struct sock, and the
 * verifier refuses a direct load beyond it, into struct inet_sock. Every
 * other transition has skc_num, a direct load on tp_btf. */
static __always_inline __u16 local_port(struct sock *sk, int newstate, const bool btf)
{
	if (btf && newstate != TCP_CLOSE)
		return sk->__sk_common.skc_num;
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

static __always_inline __u16 remote_port(struct sock *sk, const bool btf)
{
	return bpf_ntohs(RD(btf, sk->__sk_common.skc_dport, BPF_CORE_READ(sk, __sk_common.skc_dport)));
}

/* A socket's ports, read once per program run: the local one costs a helper
 * call even through a typed pointer. */
struct ports {
	__u16 local;
	__u16 remote;
};

static __always_inline struct ports read_ports(struct sock *sk, int newstate, const bool btf)
{
	struct ports p = { .local = local_port(sk, newstate, btf), .remote = remote_port(sk, btf) };

	return p;
}

static __always_inline bool port_bit(__u16 port)
{
	return port_bits[port / 64] & (1ULL << (port % 64));
}

static __always_inline bool port_wanted(struct ports p)
{
	if (!filter_ports)
		return true;
	return port_bit(p.local) || port_bit(p.remote);
}

/* Before 5.15 struct sock_cgroup_data was a union whose u64 held a cgroup
 * pointer unless one of its two low bits (is_data, no_refcnt) was set, in
 * which case, as when it was 0, the socket belonged to the root cgroup. */
struct sock_cgroup_data___old {
	__u64 val;
} __attribute__((preserve_access_index));

/* Before 6.0 a cgroup kept its ancestors' ids, not pointers to them. */
struct cgroup___old {
	__u64 ancestor_ids[0];
} __attribute__((preserve_access_index));

/* The cgroup v2 id of the socket: its creator's cgroup (a listener's, for an
 * accepted socket), i.e. the container or service it belongs to. */
static __always_inline __u64 sock_cgroup_id(struct sock *sk, const bool btf)
{
	struct cgroup *cgrp = NULL;

	if (!bpf_core_field_exists(sk->sk_cgrp_data))
		return 0;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cgrp = RD(btf, sk->sk_cgrp_data.cgroup, BPF_CORE_READ(sk, sk_cgrp_data.cgroup));
	} else {
		struct sock_cgroup_data___old *old = (void *)__builtin_preserve_access_index(&sk->sk_cgrp_data);
		__u64 val = RD(btf, old->val, BPF_CORE_READ(old, val));

		if (!val || (val & 3))
			return ROOT_CGROUP_ID;
		cgrp = (struct cgroup *)val;
	}
	if (!cgrp)
		return 0;
	/* Through a pointer taken from a u64 (pre-5.15) the load must be probed. */
	if (btf && bpf_core_field_exists(struct sock_cgroup_data, cgroup))
		return cgrp->kn->id;
	return BPF_CORE_READ(cgrp, kn, id);
}

/* The --cgroup filter: the socket's cgroup is filter_cgroup_id or below it.
 * Only runs with the filter set, so every load is probed, whatever the hook. */
static __always_inline bool cgroup_wanted(struct sock *sk)
{
	struct cgroup *cgrp = NULL, *anc = NULL;
	__u32 lvl = filter_cgroup_level;
	__u64 id = 0;

	if (!filter_cgroup_id)
		return true;
	if (!bpf_core_field_exists(sk->sk_cgrp_data))
		return false;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cgrp = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	} else {
		struct sock_cgroup_data___old *old = (void *)__builtin_preserve_access_index(&sk->sk_cgrp_data);
		__u64 val = BPF_CORE_READ(old, val);

		if (!val || (val & 3))
			return filter_cgroup_level == 0 && filter_cgroup_id == ROOT_CGROUP_ID;
		cgrp = (struct cgroup *)val;
	}
	if (!cgrp || BPF_CORE_READ(cgrp, level) < (int)lvl || lvl > 1024)
		return false;
	if (bpf_core_field_exists(cgrp->ancestors)) {
		bpf_probe_read_kernel(&anc, sizeof(anc), &cgrp->ancestors[lvl]);
		if (!anc)
			return false;
		id = BPF_CORE_READ(anc, kn, id);
	} else {
		struct cgroup___old *o = (void *)cgrp;

		bpf_probe_read_kernel(&id, sizeof(id), &o->ancestor_ids[lvl]);
	}
	return id == filter_cgroup_id;
}

/* Filters applied when a socket enters CLOSE_WAIT or is listed. */
static __always_inline bool wanted(struct sock *sk, struct ports p, const bool btf)
{
	if (!port_wanted(p))
		return false;
	if (filter_netns &&
	    RD(btf, sk->__sk_common.skc_net.net->ns.inum, BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum)) !=
		    filter_netns)
		return false;
	return cgroup_wanted(sk);
}

/* Whether the socket's local port was chosen by connect(): the bind buckets
 * that connect() creates, and only those, have fastreuse -1. Anything else
 * was bound (by bind(), listen(), or inherited from a listener by accept()),
 * and its local port is the service. */
static __always_inline __u8 direction(struct sock *sk)
{
	struct inet_connection_sock *icsk = (void *)sk;
	struct inet_bind_bucket *tb = BPF_CORE_READ(icsk, icsk_bind_hash);

	if (tb && BPF_CORE_READ(tb, fastreuse) == -1)
		return DIR_OUTBOUND;
	return DIR_INBOUND;
}

static __always_inline void agg_key_of(struct agg_key *k, __u64 cgroup_id, __u8 dir, __u16 sport, __u16 dport)
{
	k->cgroup_id = cgroup_id;
	k->port = dir == DIR_OUTBOUND ? dport : sport;
	k->dir = dir;
	__builtin_memset(k->pad, 0, sizeof(k->pad));
}

/* The aggregate of a key, created on first use; the overflow key when the
 * table is full. */
static __always_inline struct agg_val *aggregate(struct agg_key *k)
{
	static const struct agg_val zero = {};
	struct agg_val *v = bpf_map_lookup_elem(&aggregates, k);

	if (v)
		return v;
	/* A racing CPU may create it first: BPF_NOEXIST fails, the lookup finds it. */
	bpf_map_update_elem(&aggregates, k, &zero, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&aggregates, k);
	if (v)
		return v;
	count(CNT_AGG_FULL);
	k->cgroup_id = 0;
	k->port = 0;
	k->dir = DIR_OVERFLOW;
	return bpf_map_lookup_elem(&aggregates, k);
}

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u64 us = ns / 1000;
	__u32 b;

	if (us < 2)
		return 0;
	b = (us >> 32) ? log2_u32(us >> 32) + 32 : log2_u32(us);
	return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

/* read_addrs copies the socket's addresses into 16-byte fields, IPv4 in the
 * first 4 bytes and the rest zeroed (ring buffer memory is not), and
 * returns its family. */
static __always_inline __u16 read_addrs(struct sock *sk, __u8 *saddr, __u8 *daddr, const bool btf)
{
	__u16 family = RD(btf, sk->__sk_common.skc_family, BPF_CORE_READ(sk, __sk_common.skc_family));

	if (family == AF_INET6) {
		if (btf) {
			__builtin_memcpy(saddr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
			__builtin_memcpy(daddr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		} else {
			bpf_core_read(saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
			bpf_core_read(daddr, 16, &sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8);
		}
	} else {
		__builtin_memset(saddr, 0, 16);
		__builtin_memset(daddr, 0, 16);
		*(__u32 *)saddr = RD(btf, sk->__sk_common.skc_rcv_saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		*(__u32 *)daddr = RD(btf, sk->__sk_common.skc_daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
	return family;
}

/* fill writes everything but the kind-specific fields into ev. With e, the
 * socket's inode, cgroup and direction come from its CLOSE_WAIT entry: at
 * its end the socket has lost its file and bind bucket. */
static __always_inline void fill(struct event *ev, struct sock *sk, struct ports p, __u8 kind,
				 int oldstate, int newstate, __u64 now, __u64 aux, __u8 flags,
				 __u8 sk_err, __u8 xflags, const struct cw_entry *e, const bool btf)
{
	ev->ts_ns = now;
	ev->skaddr = (__u64)sk;
	ev->cookie = 0;
	if (use_cookie) {
		ev->cookie = bpf_get_socket_cookie(sk);
		flags |= EVF_COOKIE;
	}
	ev->aux_ns = aux;
	ev->netns = RD(btf, sk->__sk_common.skc_net.net->ns.inum,
		       BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum));
	/* The task is reported for a transition and as an app_close's closer;
	 * when the FIN arrives, or for a listing, it is nobody in particular. */
	if (kind == EV_TRANSITION || kind == EV_CW_LEAVE) {
		ev->pid = bpf_get_current_pid_tgid() >> 32;
		if (btf && use_task_btf) {
			/* Two loads instead of the helper's string copy, which
			 * costs about 55 ns. */
			struct task_struct *task = bpf_get_current_task_btf();

			__builtin_memcpy(ev->comm, task->comm, sizeof(ev->comm));
		} else {
			bpf_get_current_comm(ev->comm, sizeof(ev->comm));
		}
	} else {
		ev->pid = 0;
		__builtin_memset(ev->comm, 0, sizeof(ev->comm));
	}

	ev->family = read_addrs(sk, ev->saddr, ev->daddr, btf);
	ev->sport = p.local;
	ev->dport = p.remote;
	ev->kind = kind;
	ev->oldstate = oldstate;
	ev->newstate = newstate;
	ev->flags = flags;
	/* Which port is the service: for metrics of stuck sockets, keyed
	 * as the aggregates are. Trace mode does not need it. */
	ev->sk_err = sk_err;
	ev->xflags = xflags;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	if (e) {
		ev->dir = e->dir;
		ev->ino = e->ino;
		ev->cgroup_id = e->cgroup_id;
		return;
	}
	ev->dir = kind == EV_TRANSITION ? 0 : direction(sk);
	ev->ino = RD(btf, sk->sk_socket->file->f_inode->i_ino, BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino));
	ev->cgroup_id = sock_cgroup_id(sk, btf);
}

static __always_inline void emit(struct sock *sk, struct ports p, __u8 kind, int oldstate,
				 int newstate, __u64 now, __u64 aux, __u8 flags, __u8 sk_err, __u8 xflags,
				 const struct cw_entry *e, const bool btf)
{
	struct event *ev;
	__u64 wake = 0;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(CNT_RINGBUF_FULL);
		return;
	}
	fill(ev, sk, p, kind, oldstate, newstate, now, aux, flags, sk_err, xflags, e, btf);

	/* One wake-up per event costs an IRQ-work interrupt each: batch them.
	 * The record that takes the producer position past a multiple of the
	 * step asks for one. Another CPU may reserve in between, so a step can
	 * pass unnoticed: the next one, or the reader's timer, wakes it. */
	if (wakeup_bytes) {
		__u64 prod = bpf_ringbuf_query(&events, BPF_RB_PROD_POS);

		wake = BPF_RB_NO_WAKEUP;
		if ((prod & (wakeup_step - 1)) < RINGBUF_RECORD_BYTES &&
		    prod - bpf_ringbuf_query(&events, BPF_RB_CONS_POS) >= wakeup_bytes)
			wake = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(ev, wake);
}

/* trace mode: every transition. How long the socket spent in the state it
 * leaves is worked out in user space, from the socket's previous event. */
static __always_inline void trace_transition(struct sock *sk, int oldstate, int newstate, const bool btf)
{
	struct ports p = read_ports(sk, newstate, btf);

	if (!wanted(sk, p, btf))
		return;
	emit(sk, p, EV_TRANSITION, oldstate, newstate, bpf_ktime_get_boot_ns(), 0, 0, 0, 0, NULL, btf);
}

/* fill_entry records what a stuck report needs of a socket entering
 * CLOSE_WAIT (or found in it). */
static __always_inline void fill_entry(struct cw_entry *e, struct sock *sk, struct ports p, __u64 now,
				       __u8 flags, const bool btf)
{
	e->fin_ns = now;
	e->cookie = 0;
	if (use_cookie) {
		e->cookie = bpf_get_socket_cookie(sk);
		flags |= CWF_COOKIE;
	}
	e->ino = RD(btf, sk->sk_socket->file->f_inode->i_ino, BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino));
	e->cgroup_id = sock_cgroup_id(sk, btf);
	e->family = read_addrs(sk, e->saddr, e->daddr, btf);
	e->netns = RD(btf, sk->__sk_common.skc_net.net->ns.inum, BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum));
	e->sport = p.local;
	e->dport = p.remote;
	e->dir = direction(sk);
	e->flags = flags;
	e->peer_reset = 0;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
}

static __always_inline void closewait_enter(struct sock *sk, int oldstate, const bool btf)
{
	struct ports p = read_ports(sk, TCP_CLOSE_WAIT, btf);
	__u64 key = (__u64)sk, now;
	struct agg_val *agg;
	struct cw_entry entry;
	struct agg_key ak;
	__u8 flags = 0;

	if (!wanted(sk, p, btf))
		return;
	now = bpf_ktime_get_boot_ns();
	fill_entry(&entry, sk, p, now, 0, btf);
	agg_key_of(&ak, entry.cgroup_id, entry.dir, p.local, p.remote);
	agg = aggregate(&ak);
	if (agg)
		__sync_fetch_and_add(&agg->entered, 1);
	if (bpf_map_update_elem(&closewait, &key, &entry, BPF_ANY)) {
		__u8 seen = 1;

		count(CNT_MAP_FULL);
		bpf_map_update_elem(&cw_overflow, &key, &seen, BPF_ANY);
	} else {
		flags |= EVF_TRACKED;
		/* Tracked: user space reads the table for sockets past the
		 * threshold, and needs no record of a socket that closes before. */
		if (!emit_all)
			return;
	}
	emit(sk, p, EV_CW_ENTER, oldstate, TCP_CLOSE_WAIT, now, 0, flags, 0, 0, NULL, btf);
}

/* Whether the current task is exiting: its descriptors are being closed
 * by do_exit. */
static __always_inline bool task_exiting(const bool btf)
{
	struct task_struct *task;

	if (btf && use_task_btf)
		return bpf_get_current_task_btf()->flags & PF_EXITING;
	task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, flags) & PF_EXITING;
}

/* Why a socket left CLOSE_WAIT on its own: the error the kernel set before
 * tcp_done() moved it to CLOSE. tcp_reset sets EPIPE in CLOSE_WAIT
 * (ECONNRESET elsewhere), tcp_write_err ETIMEDOUT or the last soft error
 * (an ICMP one), tcp_abort (sock_diag destroy, bpf_sock_destroy)
 * ECONNABORTED. User space names the cause. */
static __always_inline __u8 abort_errno(struct sock *sk, const bool btf)
{
	int err = RD(btf, sk->sk_err, BPF_CORE_READ(sk, sk_err));

	return (__u32)err > 255 ? 255 : err;
}

#define EPIPE 32
#define ECONNRESET 104

/* Whether the socket reached CLOSE by the peer's reset (tcp_reset sets EPIPE
 * in CLOSE_WAIT, ECONNRESET elsewhere) with the application still holding
 * it: it has a file until the application's close orphans it. */
static __always_inline bool peer_reset_held(struct sock *sk, const bool btf)
{
	__u8 err = abort_errno(sk, btf);

	if (err != EPIPE && err != ECONNRESET)
		return false;
	return RD(btf, sk->sk_socket, BPF_CORE_READ(sk, sk_socket)) != NULL;
}

/* Leaving CLOSE_WAIT. A tracked socket reaching CLOSE from elsewhere means
 * its CLOSE_WAIT exit was missed: report it late, not never. */
static __always_inline void closewait_leave(struct sock *sk, int oldstate, int newstate, const bool btf)
{
	__u64 key = (__u64)sk, now, aux = 0;
	struct cw_entry *tracked;
	struct agg_val *agg = NULL;
	struct agg_key ak;
	bool counted = false, app;
	struct ports p;
	__u8 flags = 0, sk_err = 0;

	tracked = bpf_map_lookup_elem(&closewait, &key);
	if (!tracked && oldstate != TCP_CLOSE_WAIT)
		return;
	p = read_ports(sk, newstate, btf);
	/* close() sets both shutdown bits before it changes the state; a peer
	 * reset or a timeout reaches CLOSE with only RCV_SHUTDOWN set. LAST_ACK
	 * is reached only by the application's close() or shutdown(). */
	app = newstate == TCP_LAST_ACK || oldstate == TCP_LAST_ACK ||
	      (RD(btf, BPF_CORE_READ_BITFIELD(sk, sk_shutdown), BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown)) &
	       SEND_SHUTDOWN);
	now = bpf_ktime_get_boot_ns();
	if (tracked) {
		bool same = tracked->sport == p.local && tracked->dport == p.remote;

		/* The peer's reset while the application holds the socket: the
		 * application's close of the descriptor is still to come, and
		 * ends the episode (sock_destroyed). */
		if (same && !app && follow_resets && oldstate == TCP_CLOSE_WAIT && newstate == TCP_CLOSE &&
		    peer_reset_held(sk, btf)) {
			tracked->peer_reset = 1;
			__sync_fetch_and_add(&reset_held, 1);
			return;
		}
		/* Different ports: an earlier socket at this address left a stale
		 * entry; it says nothing about this one. */
		if (same) {
			aux = tracked->fin_ns;
			flags |= EVF_AUX_VALID;
			if (tracked->flags & CWF_AGE_UNKNOWN)
				flags |= EVF_AGE_UNKNOWN;
			agg_key_of(&ak, tracked->cgroup_id, tracked->dir, tracked->sport, tracked->dport);
			counted = true;
		}
		bpf_map_delete_elem(&closewait, &key);
		if (!same)
			tracked = NULL;
	}
	if (!tracked && oldstate == TCP_CLOSE_WAIT && bpf_map_delete_elem(&cw_overflow, &key) == 0) {
		/* Counted as entered when the table had no room for it. */
		agg_key_of(&ak, sock_cgroup_id(sk, btf), direction(sk), p.local, p.remote);
		counted = true;
	}
	if (counted && (agg = aggregate(&ak))) {
		if (!app) {
			__sync_fetch_and_add(&agg->aborted, 1);
		} else {
			__sync_fetch_and_add(&agg->closed, 1);
			/* The histogram takes closes whose FIN time is known. */
			if ((flags & (EVF_AUX_VALID | EVF_AGE_UNKNOWN)) == EVF_AUX_VALID && now >= aux) {
				__u32 b = hist_bucket(now - aux);

				if (b < HIST_BUCKETS)
					__sync_fetch_and_add(&agg->hist[b], 1);
				__sync_fetch_and_add(&agg->sum_us, (now - aux) / 1000);
			}
		}
	}
	if (!tracked && (oldstate != TCP_CLOSE_WAIT || !wanted(sk, p, btf)))
		return;
	/* A close before the floor is only counted: user space never saw the
	 * socket, or let it go. Aborts and untracked sockets always go up. */
	if (!emit_all && tracked && app && oldstate == TCP_CLOSE_WAIT && now - aux < emit_floor_ns)
		return;
	if (oldstate != TCP_CLOSE_WAIT)
		flags |= EVF_INDIRECT;
	if (app) {
		flags |= EVF_APP;
		/* The close runs in the task that dropped the last reference:
		 * one exiting (crashed, killed, or exited without closing) when
		 * its descriptors are closed by the exit. */
		if (oldstate == TCP_CLOSE_WAIT && task_exiting(btf))
			flags |= EVF_EXITING;
	} else {
		sk_err = abort_errno(sk, btf);
	}
	emit(sk, p, EV_CW_LEAVE, oldstate, newstate, now, aux, flags, sk_err, 0, NULL, btf);
}

static __always_inline void closewait_transition(struct sock *sk, int oldstate, int newstate, const bool btf)
{
	if (newstate == TCP_CLOSE_WAIT)
		closewait_enter(sk, oldstate, btf);
	else if (oldstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSE)
		closewait_leave(sk, oldstate, newstate, btf);
}

static __always_inline int handle(struct sock *sk, int oldstate, int newstate, const bool btf)
{
	/* The cheap state tests first: most transitions are dropped here. */
	if (mode != MODE_TRACE && newstate != TCP_CLOSE_WAIT && oldstate != TCP_CLOSE_WAIT &&
	    newstate != TCP_CLOSE)
		return 0;
	if (RD(btf, BPF_CORE_READ_BITFIELD(sk, sk_protocol), BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol)) !=
	    IPPROTO_TCP)
		return 0;
	if (mode == MODE_TRACE)
		trace_transition(sk, oldstate, newstate, btf);
	else
		closewait_transition(sk, oldstate, newstate, btf);
	return 0;
}

/* The end of a TCP socket (tcp_destroy_sock), in the task that dropped the
 * last reference: for a socket the peer reset while the application held
 * it, the application's close of its descriptor, or the exit that closed
 * it. It ends the CLOSE_WAIT episode as a close: counted as closed, with
 * its FIN-to-close latency. */
static __always_inline int sock_destroyed(struct sock *sk, const bool btf)
{
	__u64 key = (__u64)sk, now, aux;
	__u8 flags = EVF_APP | EVF_AUX_VALID;
	struct cw_entry *tracked, e;
	struct agg_val *agg;
	struct agg_key ak;
	struct ports p;

	if (mode != MODE_CLOSEWAIT || !reset_held)
		return 0;
	tracked = bpf_map_lookup_elem(&closewait, &key);
	if (!tracked || !tracked->peer_reset)
		return 0;
	__builtin_memcpy(&e, tracked, sizeof(e));
	/* Whoever deletes the entry reports it. */
	if (bpf_map_delete_elem(&closewait, &key))
		return 0;
	__sync_fetch_and_add(&reset_held, -1);
	now = bpf_ktime_get_boot_ns();
	aux = e.fin_ns;
	if (e.flags & CWF_AGE_UNKNOWN)
		flags |= EVF_AGE_UNKNOWN;
	agg_key_of(&ak, e.cgroup_id, e.dir, e.sport, e.dport);
	if ((agg = aggregate(&ak))) {
		__sync_fetch_and_add(&agg->closed, 1);
		if (!(flags & EVF_AGE_UNKNOWN) && now >= aux) {
			__u32 b = hist_bucket(now - aux);

			if (b < HIST_BUCKETS)
				__sync_fetch_and_add(&agg->hist[b], 1);
			__sync_fetch_and_add(&agg->sum_us, (now - aux) / 1000);
		}
	}
	if (!emit_all && now - aux < emit_floor_ns)
		return 0;
	if (task_exiting(btf))
		flags |= EVF_EXITING;
	p.local = e.sport;
	p.remote = e.dport;
	emit(sk, p, EV_CW_LEAVE, TCP_CLOSE, TCP_CLOSE, now, aux, flags, 0, EVX_PEER_RESET, &e, btf);
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcptrace_destroy_btf, struct sock *sk)
{
	return sock_destroyed(sk, true);
}

SEC("tracepoint/tcp/tcp_destroy_sock")
int tcptrace_destroy_tp(struct trace_event_raw_tcp_event_sk *ctx)
{
	return sock_destroyed((struct sock *)ctx->skaddr, false);
}

#define EMFILE 24
#define ENFILE 23
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The TCP socket behind the current task's descriptor fd, or NULL. */
static __always_inline struct sock *fd_sock(__s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *f = NULL;
	struct socket *sock;
	struct sock *sk;
	__u16 proto;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	/* get_unused_fd_flags runs before the descriptor is checked to be a
	 * socket: any descriptor may come here. */
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	if (!sock || !(sk = BPF_CORE_READ(sock, sk)))
		return NULL;
	/* Go (1.24+) listens with MPTCP where the kernel has it: its
	 * listener is an MPTCP socket, its connections TCP underneath. */
	proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	if (proto != IPPROTO_TCP && proto != IPPROTO_MPTCP)
		return NULL;
	return sk;
}

static __always_inline int accept_enter(__s64 fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	__s32 v = fd;

	if (mode != MODE_CLOSEWAIT)
		return 0;
	if (bpf_map_update_elem(&accept_fd, &id, &v, BPF_ANY))
		__sync_fetch_and_add(&accept_untracked, 1);
	return 0;
}

/* A failure for want of a descriptor is counted per process, listener and
 * reason; the first of a key is reported (EV_ACCEPT_FAIL). The queue keeps
 * the connection: the descriptor is taken before it is dequeued. */
static __always_inline int accept_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct accept_val v = {}, *cur;
	struct accept_key k = {};
	struct ports p = {};
	struct event *ev;
	struct sock *sk;
	__s32 *fdp, fd;

	fdp = bpf_map_lookup_elem(&accept_fd, &id);
	if (!fdp)
		return 0;
	fd = *fdp;
	bpf_map_delete_elem(&accept_fd, &id);
	if (ret != -EMFILE && ret != -ENFILE)
		return 0;
	sk = fd_sock(fd);
	if (!sk)
		return 0;
	p.local = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!wanted(sk, p, false))
		return 0;
	k.tgid = id >> 32;
	k.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	k.port = p.local;
	k.reason = ret == -EMFILE ? ACCEPT_EMFILE : ACCEPT_ENFILE;
	cur = bpf_map_lookup_elem(&accept_fails, &k);
	if (cur) {
		__sync_fetch_and_add(&cur->count, 1);
		return 0;
	}
	v.count = 1;
	v.first_ns = bpf_ktime_get_boot_ns();
	v.cgroup_id = sock_cgroup_id(sk, false);
	bpf_get_current_comm(v.comm, sizeof(v.comm));
	if (bpf_map_update_elem(&accept_fails, &k, &v, BPF_NOEXIST)) {
		/* Full, or another thread of the process was first. */
		if ((cur = bpf_map_lookup_elem(&accept_fails, &k)))
			__sync_fetch_and_add(&cur->count, 1);
		else
			__sync_fetch_and_add(&accept_fails_lost, 1);
		return 0;
	}
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(CNT_RINGBUF_FULL);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = v.first_ns;
	ev->skaddr = (__u64)sk;
	ev->netns = k.netns;
	ev->pid = k.tgid;
	__builtin_memcpy(ev->comm, v.comm, sizeof(ev->comm));
	ev->family = read_addrs(sk, ev->saddr, ev->daddr, false);
	ev->sport = k.port;
	ev->kind = EV_ACCEPT_FAIL;
	ev->newstate = TCP_LISTEN;
	ev->sk_err = k.reason;
	ev->ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	ev->cgroup_id = v.cgroup_id;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* Classic syscall tracepoints, accept() and accept4() alone: the raw
 * sys_enter/sys_exit tracepoints would run for every system call. */
SEC("tracepoint/syscalls/sys_enter_accept4")
int tcptrace_accept4_enter(struct trace_event_raw_sys_enter *ctx)
{
	return accept_enter(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tcptrace_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_accept")
int tcptrace_accept_enter(struct trace_event_raw_sys_enter *ctx)
{
	return accept_enter(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tcptrace_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return accept_exit(ctx->ret);
}

/* Preferred: typed arguments, no tracefs needed. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcptrace_set_state_btf, struct sock *sk, int oldstate, int newstate)
{
	return handle(sk, oldstate, newstate, true);
}

/* Fallback for kernels that refuse BPF_PROG_TYPE_TRACING. */
SEC("tracepoint/sock/inet_sock_set_state")
int tcptrace_set_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	return handle((struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate, false);
}

/* Snapshot: lists the TCP sockets in CLOSE_WAIT in the reading process's
 * network namespace. Those not yet tracked are tracked from now on, like
 * sockets seen entering CLOSE_WAIT, with their age unknown. Those already
 * tracked are listed too (EVF_KNOWN), for their current inode: a socket
 * still in the accept queue when the FIN arrived had no file then. Records
 * go to the iterator's seq_file, which user space reads without loss. */
SEC("iter/tcp")
int tcptrace_snapshot(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct cw_entry entry = {}, *known;
	struct agg_val *agg;
	struct agg_key ak;
	struct event ev = {};
	struct tcp_sock *tp;
	struct sock *sk;
	struct ports p;
	__u64 key, now, aux = 0;
	__u8 flags = 0;

	if (!skc || skc->skc_state != TCP_CLOSE_WAIT)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	p = read_ports(sk, TCP_CLOSE_WAIT, true);
	if (!wanted(sk, p, true))
		return 0;
	key = (__u64)sk;
	now = bpf_ktime_get_boot_ns();
	fill_entry(&entry, sk, p, now, CWF_AGE_UNKNOWN, true);
	if (bpf_map_update_elem(&closewait, &key, &entry, BPF_NOEXIST) == 0) {
		/* The iterator does not hold the socket lock: if a close ran since
		 * the state test, the entry would outlive the socket's exit. */
		if (BPF_CORE_READ(skc, skc_state) != TCP_CLOSE_WAIT) {
			bpf_map_delete_elem(&closewait, &key);
			return 0;
		}
		flags |= EVF_TRACKED;
		agg_key_of(&ak, entry.cgroup_id, entry.dir, p.local, p.remote);
		if ((agg = aggregate(&ak)))
			__sync_fetch_and_add(&agg->entered, 1);
	} else if ((known = bpf_map_lookup_elem(&closewait, &key))) {
		/* Tracked already: by the live program, by an earlier listing, or
		 * by this one, when the seq_file buffer filled and the kernel runs
		 * this program again for the same socket. Say which and since when,
		 * so user space can tell a socket it knows from one it must adopt. */
		flags |= EVF_TRACKED | EVF_KNOWN | EVF_AUX_VALID;
		aux = known->fin_ns;
		if (known->flags & CWF_AGE_UNKNOWN)
			flags |= EVF_AGE_UNKNOWN;
	} else if (bpf_map_lookup_elem(&cw_overflow, &key)) {
		/* The live program saw it, with no room to track it. */
		flags |= EVF_KNOWN;
	}
	/* Neither: the table is full. Not counted here, as every listing would
	 * count the same sockets again; user space counts them once. */
	fill(&ev, sk, p, EV_SNAPSHOT, TCP_CLOSE_WAIT, TCP_CLOSE_WAIT, now, aux, flags, 0, 0, NULL, true);
	bpf_seq_write(ctx->meta->seq, &ev, sizeof(ev));
	return 0;
}

/* Scan: walks the CLOSE_WAIT table in the kernel and hands user space the
 * entries past the threshold (fin_ns at or before scan_ctl.due_ns) that no
 * earlier scan handed over, marking them so: with 100,000 sockets stuck and
 * reported, a scan then copies nothing to user space. An entry marked by a
 * scan whose record user space never read is not handed over again; user
 * space reads every record of a scan it starts. */
SEC("iter/bpf_map_elem")
int tcptrace_scan(struct bpf_iter__bpf_map_elem *ctx)
{
	struct cw_entry *e = ctx->value;
	__u64 *key = ctx->key;
	struct scan_ctl *ctl;
	struct scan_rec rec;
	__u32 zero = 0;

	ctl = bpf_map_lookup_elem(&scan_control, &zero);
	if (!ctl || !key || !e)
		return 0;
	/* One reader at a time runs the program: no atomics needed. */
	ctl->total++;
	if (e->flags & CWF_REPORTED) {
		ctl->reported++;
		return 0;
	}
	if (e->fin_ns > ctl->due_ns)
		return 0;
	e->flags |= CWF_REPORTED;
	rec.key = *key;
	__builtin_memcpy(&rec.entry, e, sizeof(rec.entry));
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
