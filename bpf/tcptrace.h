/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Layout shared by the eBPF programs and tracer/decode.go. Field order keeps
 * every member naturally aligned so the layout is identical on all arches. */
#ifndef TCPTRACE_H
#define TCPTRACE_H

/* What kind of record crosses the ring buffer. */
enum event_kind {
	EV_TRANSITION = 1, /* trace mode: any TCP state change */
	EV_CW_ENTER = 2,   /* the socket entered CLOSE_WAIT: the peer's FIN arrived */
	EV_CW_LEAVE = 3,   /* the socket left CLOSE_WAIT */
	EV_SNAPSHOT = 4,   /* start-up snapshot: the socket was already in CLOSE_WAIT */
	EV_ACCEPT_FAIL = 5, /* a process's first accept() failing for want of a descriptor on a listener */
};

/* event.flags */
enum event_flag {
	EVF_AUX_VALID = 1 << 0, /* aux_ns holds a value */
	EVF_APP = 1 << 1,       /* cw_leave: the application closed or shut down the socket */
	EVF_INDIRECT = 1 << 2,  /* cw_leave: the CLOSE_WAIT exit itself was not seen, a later transition was */
	EVF_COOKIE = 1 << 3,    /* cookie holds the kernel's socket cookie */
	EVF_TRACKED = 1 << 4,   /* cw_enter, snapshot: the socket is in the kernel's closewait table */
	EVF_AGE_UNKNOWN = 1 << 5, /* cw_leave: aux_ns is when the socket was first seen, not its FIN */
	EVF_KNOWN = 1 << 6,       /* snapshot: already tracked; the record gives its current inode */
	EVF_EXITING = 1 << 7,     /* cw_leave by the application: the task closing it was exiting (PF_EXITING) */
};

/* event.xflags */
enum event_xflag {
	/* cw_leave by the application: the peer had reset the connection in
	 * CLOSE_WAIT while the application held the socket, and this is the
	 * application's close of its descriptor (tcp_destroy_sock). */
	EVX_PEER_RESET = 1 << 0,
};

/* cw_entry.flags */
enum cw_flag {
	CWF_AGE_UNKNOWN = 1 << 0, /* found by the start-up snapshot: fin_ns is first sight */
	CWF_COOKIE = 1 << 1,      /* cookie holds the kernel's socket cookie */
	CWF_REPORTED = 1 << 2,    /* the scan iterator has handed it to user space */
};

/* Which side opened the connection, for the aggregates' service port. */
enum direction {
	DIR_INBOUND = 1,  /* accepted, or bound by the application: the service is the local port */
	DIR_OUTBOUND = 2, /* connected from a port connect() chose: the service is the remote port */
	DIR_OVERFLOW = 3, /* the aggregate table was full: counted under one key */
};

/* FIN-to-close histogram: bucket i counts closes in [2^i, 2^(i+1)) us;
 * bucket 0 also takes those under 1 us, the last everything longer. */
#define HIST_BUCKETS 36

enum mode {
	MODE_CLOSEWAIT = 0,
	MODE_TRACE = 1,
};

/* Per-CPU counters, summed by user space. */
enum counter {
	CNT_RINGBUF_FULL = 0, /* bpf_ringbuf_reserve failed: an event was dropped */
	CNT_MAP_FULL = 1,     /* a socket could not be tracked in a kernel table */
	CNT_AGG_FULL = 2,     /* an aggregate key did not fit: counted under DIR_OVERFLOW */
	CNT_MAX = 3,
};

struct event {
	__u64 ts_ns;  /* CLOCK_BOOTTIME of the transition */
	__u64 skaddr; /* kernel address: correlation key only, never exported */
	__u64 cookie; /* socket cookie when EVF_COOKIE */
	__u64 aux_ns; /* cw_leave: FIN time; snapshot: first sight (boot ns) */
	__u32 netns;  /* network namespace inode */
	__u32 pid;    /* tgid of the task the kernel ran in (not necessarily the owner) */
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 sport;  /* host byte order */
	__u16 dport;  /* host byte order */
	__u8 kind;
	__u8 oldstate;
	__u8 newstate;
	__u8 flags;
	__u8 dir; /* enum direction, in closewait mode; 0 for a transition */
	__u8 sk_err; /* cw_leave not by the application: sk->sk_err at the transition (errno, 255 if above) */
	__u8 xflags; /* enum event_xflag */
	__u8 pad[3];
	__u64 ino;       /* socket inode, 0 when no file holds the socket */
	__u64 cgroup_id; /* cgroup v2 id of the socket (its creator's cgroup), 0 if unknown */
};

/* Kernel-side record of a socket in CLOSE_WAIT: all that a stuck report
 * needs, so user space learns of a socket only by reading this table once
 * the socket is past the threshold. The ports tell a stale entry (its
 * socket's exit was missed and the address reused) from a live one; fin_ns
 * lets user space check that an entry is the episode it knows. */
struct cw_entry {
	__u64 fin_ns;    /* CLOCK_BOOTTIME of the FIN, or first sight (CWF_AGE_UNKNOWN) */
	__u64 cookie;    /* socket cookie when CWF_COOKIE */
	__u64 ino;       /* socket inode when it entered CLOSE_WAIT, 0 without a file */
	__u64 cgroup_id; /* as in struct event */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 dir;   /* enum direction */
	__u8 flags; /* enum cw_flag */
	/* The peer reset it while the application held it (it is in CLOSE
	 * now): the close of the descriptor ends it, not the reset. A byte of
	 * its own: the scan iterator writes flags without atomics. */
	__u8 peer_reset;
	__u8 pad[3];
};

/* accept()/accept4() failing for want of a descriptor: the application
 * cannot take connections off the listener's queue (map accept_fails). */
enum accept_reason {
	ACCEPT_EMFILE = 1, /* the process is at its RLIMIT_NOFILE */
	ACCEPT_ENFILE = 2, /* the system's file table is full (fs.file-max) */
};

struct accept_key {
	__u32 tgid;
	__u32 netns; /* the listener's network namespace */
	__u16 port;  /* the listener's local port */
	__u8 reason; /* enum accept_reason */
	__u8 pad[5];
};

struct accept_val {
	__u64 count;
	__u64 first_ns;  /* CLOCK_BOOTTIME of the first failure */
	__u64 cgroup_id; /* the listener's cgroup v2 id (its creator's) */
	char comm[16];   /* the process's, at the first failure */
};

/* Aggregates, per socket cgroup, service port and direction. */
struct agg_key {
	__u64 cgroup_id;
	__u16 port; /* the service port: local if inbound, remote if outbound */
	__u8 dir;   /* enum direction */
	__u8 pad[5];
};

struct agg_val {
	__u64 entered; /* entered CLOSE_WAIT (or found in it by a listing) */
	__u64 closed;  /* left it by the application's close or shutdown */
	__u64 aborted; /* left it otherwise: reset, timeout, destroyed */
	__u64 hist[HIST_BUCKETS]; /* FIN-to-close of closes whose FIN time is known */
	__u64 sum_us;             /* their FIN-to-close latencies added up, in µs */
};

/* The scan iterator's parameters and results (map scan_control). */
struct scan_ctl {
	__u64 due_ns;   /* in: hand over entries with fin_ns at or before this */
	__u64 total;    /* out: entries in the table */
	__u64 reported; /* out: entries skipped as handed over by an earlier scan */
};

/* What the scan iterator writes per entry handed over. */
struct scan_rec {
	__u64 key;
	struct cw_entry entry;
};

#endif
