// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcptrace kill: list the TCP sockets stuck in CLOSE_WAIT, and destroy some
 * of them by socket cookie, checking under the socket lock that each is
 * still in CLOSE_WAIT. Both programs are iter/tcp: they see the sockets of
 * the network namespace of the task that opens the iterator. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"

#define AF_INET 2
#define AF_INET6 10
#define ROOT_CGROUP_ID 1 /* kernfs id of the cgroup v2 root */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* What tcptrace_cw_list writes per socket in CLOSE_WAIT (decoded by
 * tracer/destroy.go). Field order keeps every member naturally aligned, so
 * the layout is the same on all arches. The addresses are as in struct
 * event: IPv4 in the first 4 bytes, the rest zero. */
struct cw_sock {
	__u64 cookie;    /* socket cookie; 0 when not yet generated (see use_cookie_helper) */
	__u64 ino;       /* socket inode, 0 when no file holds the socket */
	__u64 cgroup_id; /* cgroup v2 id of the socket (its creator's cgroup), 0 if unknown */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns; /* network namespace inode */
	__u32 uid;   /* the socket's owner (sock_i_uid), in the reader's user namespace */
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 sport;  /* host byte order */
	__u16 dport;  /* host byte order */
	__u8 pad[2];
};

/* What tcptrace_destroy records per target in map results, besides the
 * return of bpf_sock_destroy (0, or a negative errno). A positive value is
 * DS_LEFT_BASE plus the TCP state the socket was found in, not CLOSE_WAIT:
 * it was left alone. */
enum destroy_status {
	DS_DESTROYED = 0,
	DS_LEFT_BASE = 0x100,
};

/* Before Linux 5.12 tracing programs may not call bpf_get_socket_cookie.
 * When false the listing reads the cookie field instead, which holds 0 until
 * something asks for the cookie; user space then gets it from sock_diag. */
const volatile bool use_cookie_helper = true;

/* Sockets to destroy, by cookie, filled by user space before each run. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u8);
} targets SEC(".maps");

/* What happened to each target found, by cookie (see enum destroy_status).
 * A target without an entry was not found. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __s32);
} results SEC(".maps");

/* Keep the record types in the BTF so bpf2go can generate their Go types. */
const struct cw_sock *unused_cw_sock __attribute__((unused));
const enum destroy_status *unused_destroy_status __attribute__((unused));

/* Implemented by Linux 6.5 and later for iter/tcp and iter/udp programs,
 * which run with the socket locked: aborts the socket as SOCK_DESTROY does
 * (RST to the peer, ECONNABORTED to the owner). */
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Before 5.15 struct sock_cgroup_data was a union whose u64 held a cgroup
 * pointer unless one of its two low bits (is_data, no_refcnt) was set, in
 * which case, as when it was 0, the socket belonged to the root cgroup. */
struct sock_cgroup_data___old {
	__u64 val;
} __attribute__((preserve_access_index));

/* The cgroup v2 id of the socket, as tcptrace.bpf.c reads it through a
 * typed pointer. */
static __always_inline __u64 sock_cgroup_id(struct sock *sk)
{
	struct cgroup *cgrp = NULL;

	if (!bpf_core_field_exists(sk->sk_cgrp_data))
		return 0;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cgrp = sk->sk_cgrp_data.cgroup;
		if (!cgrp)
			return 0;
		return cgrp->kn->id;
	} else {
		struct sock_cgroup_data___old *old = (void *)__builtin_preserve_access_index(&sk->sk_cgrp_data);
		__u64 val = old->val;

		if (!val || (val & 3))
			return ROOT_CGROUP_ID;
		cgrp = (struct cgroup *)val;
	}
	/* Through a pointer taken from a u64 the load must be probed. */
	return BPF_CORE_READ(cgrp, kn, id);
}

/* The listing: one struct cw_sock per TCP socket in CLOSE_WAIT. On Linux
 * 6.5 and later the iterator holds the socket lock while this runs. */
SEC("iter/tcp")
int tcptrace_cw_list(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct cw_sock rec = {};
	struct tcp_sock *tp;
	struct sock *sk;

	if (!skc || skc->skc_state != TCP_CLOSE_WAIT)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	if (use_cookie_helper)
		rec.cookie = bpf_get_socket_cookie(sk);
	else
		rec.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	rec.ino = sk->sk_socket->file->f_inode->i_ino;
	rec.cgroup_id = sock_cgroup_id(sk);
	rec.family = sk->__sk_common.skc_family;
	if (rec.family == AF_INET6) {
		__builtin_memcpy(rec.saddr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(rec.daddr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		*(__u32 *)rec.saddr = sk->__sk_common.skc_rcv_saddr;
		*(__u32 *)rec.daddr = sk->__sk_common.skc_daddr;
	}
	rec.netns = sk->__sk_common.skc_net.net->ns.inum;
	rec.uid = ctx->uid;
	rec.sport = sk->__sk_common.skc_num;
	rec.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

/* The destroyer: for each socket whose cookie is in targets, destroy it if
 * it is in CLOSE_WAIT and record what happened in results. The iterator
 * holds the socket lock (Linux 6.5 and later, which the kfunc needs anyway),
 * so the state cannot change between the test and the destroy: a socket that
 * left CLOSE_WAIT since the listing is left alone. Writes nothing to the
 * seq_file, so the kernel never runs this twice for a socket after a full
 * buffer; the first result of a socket is kept all the same. */
SEC("iter/tcp")
int tcptrace_destroy(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	__u64 cookie;
	__s32 res;
	int state;

	if (!skc)
		return 0;
	/* Full sockets only: a time-wait or request socket is not in CLOSE_WAIT. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	cookie = bpf_get_socket_cookie(tp);
	if (!bpf_map_lookup_elem(&targets, &cookie))
		return 0;
	state = skc->skc_state;
	if (state != TCP_CLOSE_WAIT)
		res = DS_LEFT_BASE + (state & 0xff);
	else
		res = bpf_sock_destroy(skc);
	bpf_map_update_elem(&results, &cookie, &res, BPF_NOEXIST);
	return 0;
}
