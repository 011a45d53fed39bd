// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Ambit's eBPF capture for enrolled pods (Istio's in-pod intent):
 *
 * - outbound: a TCP connect() from an enrolled network namespace is sent to
 *   ztunnel's outbound port on the pod's own address (loopback if it has
 *   none of that family) (cgroup connect4/connect6), unless
 *   the socket carries ztunnel's mark or the destination is loopback, the
 *   pod itself or the kubelet probe address. The original destination is
 *   kept by socket cookie, then by the client's address once the port is
 *   bound (sockops TCP_CONNECT_CB);
 * - getsockopt(SO_ORIGINAL_DST) by ztunnel on the accepted socket answers
 *   that destination (cgroup getsockopt), or the socket's own local address
 *   for inbound connections steered by sk_lookup (as TPROXY would);
 * - inbound: a TCP connection arriving at an enrolled pod from outside
 *   (not made inside the namespace, not to the HBONE port, not from the
 *   probe address) is
 *   given to ztunnel's inbound listener in that namespace (sk_lookup). The
 *   listener is registered when ztunnel calls listen() (sockops
 *   TCP_LISTEN_CB). Without a listener the connection is dropped: an
 *   enrolled pod fails closed.
 *
 * - optional (config splice_local): the sockets of connections with both
 *   ends in one enrolled namespace (the app and its ztunnel) go into a
 *   SOCKHASH when established, and sk_msg hands each send to the peer
 *   socket's receive queue, skipping TCP/IP on loopback.
 *
 * Every program returns "allow"; none ever refuses a connect or an option.
 */
#include "helpers.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The loader pins every map in its pin directory under the map's name. */

/* Set by the loader: marks and ports (host byte order) and probe sources. */
struct config {
	__u32 mark;
	__u32 mark_mask;
	__u32 outbound_port;
	__u32 inbound_port;
	__u32 hbone_port;
	__u32 probe4;		/* network byte order */
	__u32 probe6[4];	/* network byte order */
	__u32 splice_local;	/* sk_msg between local sockets: 1 on */
};

/* An enrolled namespace (key: netns cookie) and its pod's addresses. */
struct pod {
	__u32 ip4;		/* network byte order, 0 if none */
	__u32 ip6[4];		/* network byte order, zero if none */
};

/* A destination: address in network byte order, port in host order. */
struct addr {
	__u32 ip[4];		/* IPv4 in ip[0] */
	__u32 port;
	__u32 family;
};

/* A connection's client end inside one namespace. */
struct peer {
	__u64 netns;
	struct addr a;
};

/* ztunnel's inbound listener in one namespace. */
struct listener {
	__u64 netns;
	__u32 port;
	__u32 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} ambit_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pod);
} ambit_enrolled SEC(".maps");

/* Enrolled pods' addresses (port 0) to their namespace cookie: sk_lookup
 * programs cannot read the cookie of the namespace they run in. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct addr);
	__type(value, __u64);
} ambit_pod_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct addr);
} ambit_orig_by_cookie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer);
	__type(value, struct addr);
} ambit_orig_by_peer SEC(".maps");

/* Connections made inside an enrolled namespace to the pod's own address
 * (ztunnel delivering inbound traffic, the app calling itself), by client
 * address: sk_lookup leaves them to the normal lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer);
	__type(value, __u32);
} ambit_local_conns SEC(".maps");

/* Both ends of a connection inside one namespace, by (local, remote). */
struct conn_key {
	__u64 netns;
	struct addr local;
	struct addr remote;
};

/* Sockets of connections with both ends in one enrolled namespace (the
 * app and ztunnel): sk_msg hands their bytes to the peer socket directly. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, __u32);
} ambit_local_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16384);
	__type(key, struct listener);
	__type(value, __u32);
} ambit_listeners SEC(".maps");

INLINE struct config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ambit_config, &zero);
}

INLINE int is_v4_mapped(const __u32 *ip6)
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);
}

INLINE int is_loopback4(__u32 ip)
{
	return (bpf_ntohl(ip) >> 24) == 127;
}

INLINE int same6(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* Normalises an address as seen by a socket: IPv4-mapped IPv6 is IPv4. */
INLINE void set_addr(struct addr *a, __u32 family, __u32 ip4,
		     const __u32 *ip6, __u32 port)
{
	a->port = port;
	if (family == AF_INET6 && !is_v4_mapped(ip6)) {
		a->family = AF_INET6;
		a->ip[0] = ip6[0];
		a->ip[1] = ip6[1];
		a->ip[2] = ip6[2];
		a->ip[3] = ip6[3];
	} else {
		a->family = AF_INET;
		a->ip[0] = family == AF_INET6 ? ip6[3] : ip4;
	}
}

INLINE int exempt4(const struct config *cfg, const struct pod *pod, __u32 dst)
{
	return dst == 0 || is_loopback4(dst) || dst == pod->ip4 ||
	       dst == cfg->probe4;
}

/* Outbound: keeps the destination by cookie and points the connect at
 * ztunnel on loopback. Returns 0 when the connect is left alone. */
INLINE int keep_orig(struct bpf_sock_addr *ctx, struct addr *orig)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	return bpf_map_update_elem(&ambit_orig_by_cookie, &cookie, orig,
				   BPF_ANY) == 0;
}

/* A TCP connect that is not ztunnel's own (by socket mark). */
INLINE int outbound_candidate(struct bpf_sock_addr *ctx,
			      const struct config *cfg)
{
	if (ctx->type != 1 /* SOCK_STREAM */ || ctx->protocol != IPPROTO_TCP)
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	return (cfg->mark_mask & sk->mark) != cfg->mark;
}

/* The configuration and the pod of a connect to redirect; 0 when the
 * connect is left alone (not enrolled, not TCP, ztunnel's own). */
INLINE int outbound_begin(struct bpf_sock_addr *ctx, struct config **cfg,
			  struct pod **pod)
{
	*cfg = config();
	if (!*cfg)
		return 0;
	__u64 ns = bpf_get_netns_cookie(ctx);
	*pod = bpf_map_lookup_elem(&ambit_enrolled, &ns);
	if (!*pod)
		return 0;
	return outbound_candidate(ctx, *cfg);
}

SEC("cgroup/connect4")
int ambit_connect4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = 0;
	struct pod *pod = 0;
	if (!outbound_begin(ctx, &cfg, &pod) || !cfg || !pod)
		return 1;
	__u32 dst = ctx->user_ip4;
	if (exempt4(cfg, pod, dst))
		return 1;
	struct addr orig = {};
	orig.family = AF_INET;
	orig.ip[0] = dst;
	orig.port = bpf_ntohs((__u16)ctx->user_port);
	if (!keep_orig(ctx, &orig))
		return 1;
	/* To the pod's own address, so the connection's source stays the pod
	 * (as after a netfilter redirect) and ztunnel knows the workload. */
	ctx->user_ip4 = pod->ip4 ? pod->ip4 : bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons((__u16)cfg->outbound_port);
	return 1;
}

SEC("cgroup/connect6")
int ambit_connect6(struct bpf_sock_addr *ctx)
{
	struct config *cfg = 0;
	struct pod *pod = 0;
	if (!outbound_begin(ctx, &cfg, &pod) || !cfg || !pod)
		return 1;
	__u32 ip[4];
	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	struct addr orig = {};
	orig.port = bpf_ntohs((__u16)ctx->user_port);
	if (is_v4_mapped(ip)) {
		if (exempt4(cfg, pod, ip[3]))
			return 1;
		orig.family = AF_INET;
		orig.ip[0] = ip[3];
		if (!keep_orig(ctx, &orig))
			return 1;
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = pod->ip4 ? pod->ip4 : bpf_htonl(0x7f000001);
	} else {
		__u32 any = ip[0] | ip[1] | ip[2] | ip[3];
		int lo = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 &&
			 ip[3] == bpf_htonl(1);
		if (!any || lo || same6(ip, pod->ip6) || same6(ip, cfg->probe6))
			return 1;
		orig.family = AF_INET6;
		orig.ip[0] = ip[0];
		orig.ip[1] = ip[1];
		orig.ip[2] = ip[2];
		orig.ip[3] = ip[3];
		if (!keep_orig(ctx, &orig))
			return 1;
		__u32 any6 = pod->ip6[0] | pod->ip6[1] | pod->ip6[2] |
			     pod->ip6[3];
		ctx->user_ip6[0] = any6 ? pod->ip6[0] : 0;
		ctx->user_ip6[1] = any6 ? pod->ip6[1] : 0;
		ctx->user_ip6[2] = any6 ? pod->ip6[2] : 0;
		ctx->user_ip6[3] = any6 ? pod->ip6[3] : bpf_htonl(1);
	}
	ctx->user_port = bpf_htons((__u16)cfg->outbound_port);
	return 1;
}

SEC("sockops")
int ambit_sockops(struct bpf_sock_ops *ops)
{
	__u32 op = ops->op;
	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		__u32 ip6[4] = {ops->local_ip6[0], ops->local_ip6[1],
				ops->local_ip6[2], ops->local_ip6[3]};
		__u32 rip6[4] = {ops->remote_ip6[0], ops->remote_ip6[1],
				 ops->remote_ip6[2], ops->remote_ip6[3]};
		__u64 ns = bpf_get_netns_cookie(ops);
		struct addr dst = {};
		set_addr(&dst, ops->family, ops->remote_ip4, rip6, 0);
		__u64 *owner = bpf_map_lookup_elem(&ambit_pod_netns, &dst);
		if (owner && *owner == ns) {
			struct peer local = {};
			__u32 one = 1;
			local.netns = ns;
			set_addr(&local.a, ops->family, ops->local_ip4, ip6,
				 ops->local_port);
			bpf_map_update_elem(&ambit_local_conns, &local, &one,
					    BPF_ANY);
		}
		/* The client's port is bound now: re-key the destination by
		 * the client's address, which ztunnel sees as its peer. */
		__u64 cookie = bpf_get_socket_cookie(ops);
		struct addr *orig =
			bpf_map_lookup_elem(&ambit_orig_by_cookie, &cookie);
		if (!orig)
			return 1;
		struct peer key = {};
		key.netns = ns;
		set_addr(&key.a, ops->family, ops->local_ip4, ip6,
			 ops->local_port);
		bpf_map_update_elem(&ambit_orig_by_peer, &key, orig, BPF_ANY);
		bpf_map_delete_elem(&ambit_orig_by_cookie, &cookie);
	} else if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
		   op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		struct config *cfg = config();
		if (!cfg || !cfg->splice_local)
			return 1;
		__u64 ns = bpf_get_netns_cookie(ops);
		if (!bpf_map_lookup_elem(&ambit_enrolled, &ns))
			return 1;
		__u32 l6[4] = {ops->local_ip6[0], ops->local_ip6[1],
			       ops->local_ip6[2], ops->local_ip6[3]};
		__u32 r6[4] = {ops->remote_ip6[0], ops->remote_ip6[1],
			       ops->remote_ip6[2], ops->remote_ip6[3]};
		struct conn_key key = {};
		key.netns = ns;
		set_addr(&key.local, ops->family, ops->local_ip4, l6,
			 ops->local_port);
		set_addr(&key.remote, ops->family, ops->remote_ip4, r6,
			 bpf_ntohs((__u16)ops->remote_port));
		/* The other end is here: the pod's own address (the app and
		 * ztunnel's 15001), or a connection recorded as made inside
		 * the namespace (ztunnel's original-source delivery). */
		struct addr remote_ip = key.remote;
		remote_ip.port = 0;
		__u64 *owner = bpf_map_lookup_elem(&ambit_pod_netns, &remote_ip);
		struct peer client = {};
		client.netns = ns;
		client.a = key.remote;
		int local = (owner && *owner == ns) ||
			    bpf_map_lookup_elem(&ambit_local_conns, &client);
		if (!local) {
			client.a = key.local;
			local = bpf_map_lookup_elem(&ambit_local_conns, &client) != 0;
		}
		if (local)
			bpf_sock_hash_update(ops, &ambit_local_socks, &key,
					     BPF_ANY);
	} else if (op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
		struct config *cfg = config();
		if (!cfg || ops->local_port != cfg->inbound_port)
			return 1;
		__u64 ns = bpf_get_netns_cookie(ops);
		if (!bpf_map_lookup_elem(&ambit_enrolled, &ns))
			return 1;
		struct listener key = {};
		key.netns = ns;
		key.port = cfg->inbound_port;
		key.family = ops->family;
		bpf_sock_hash_update(ops, &ambit_listeners, &key, BPF_ANY);
	}
	return 1;
}

SEC("cgroup/getsockopt")
int ambit_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST)
		return 1;
	if (ctx->level != SOL_IP && ctx->level != SOL_IPV6)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	__u64 ns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&ambit_enrolled, &ns))
		return 1;
	struct peer key = {};
	__u32 dst6[4] = {sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2],
			 sk->dst_ip6[3]};
	key.netns = ns;
	set_addr(&key.a, sk->family, sk->dst_ip4, dst6,
		 bpf_ntohs((__u16)sk->dst_port));
	struct addr local = {};
	struct addr *orig = bpf_map_lookup_elem(&ambit_orig_by_peer, &key);
	if (!orig) {
		/* Not redirected at connect time: the destination is the
		 * socket's own address (sk_lookup kept it, as TPROXY does). */
		if (ctx->retval == 0)
			return 1;
		__u32 src6[4] = {sk->src_ip6[0], sk->src_ip6[1],
				 sk->src_ip6[2], sk->src_ip6[3]};
		set_addr(&local, sk->family, sk->src_ip4, src6, sk->src_port);
		orig = &local;
	}
	if (ctx->level == SOL_IP && orig->family == AF_INET) {
		__u8 *p = ctx->optval;
		if (p + 16 > (__u8 *)ctx->optval_end)
			return 1;
		__u16 port = bpf_htons((__u16)orig->port);
		__u16 fam = AF_INET;
		__builtin_memcpy(p, &fam, 2);
		__builtin_memcpy(p + 2, &port, 2);
		__builtin_memcpy(p + 4, &orig->ip[0], 4);
		__builtin_memset(p + 8, 0, 8);
		ctx->optlen = 16;
		ctx->retval = 0;
	} else if (ctx->level == SOL_IPV6 && orig->family == AF_INET6) {
		__u8 *p = ctx->optval;
		if (p + 28 > (__u8 *)ctx->optval_end)
			return 1;
		__u16 port = bpf_htons((__u16)orig->port);
		__u16 fam = AF_INET6;
		__builtin_memcpy(p, &fam, 2);
		__builtin_memcpy(p + 2, &port, 2);
		__builtin_memset(p + 4, 0, 4);
		__builtin_memcpy(p + 8, &orig->ip[0], 16);
		__builtin_memset(p + 24, 0, 4);
		ctx->optlen = 28;
		ctx->retval = 0;
	}
	return 1;
}

SEC("sk_lookup")
int ambit_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct config *cfg = config();
	if (!cfg || ctx->local_port == cfg->hbone_port)
		return SK_PASS;
	struct addr local = {};
	struct listener key = {};
	key.port = cfg->inbound_port;
	if (ctx->family == AF_INET) {
		if (ctx->remote_ip4 == cfg->probe4 || is_loopback4(ctx->local_ip4))
			return SK_PASS;
		local.family = AF_INET;
		local.ip[0] = ctx->local_ip4;
	} else {
		__u32 r[4] = {ctx->remote_ip6[0], ctx->remote_ip6[1],
			      ctx->remote_ip6[2], ctx->remote_ip6[3]};
		if (same6(r, cfg->probe6))
			return SK_PASS;
		local.family = AF_INET6;
		local.ip[0] = ctx->local_ip6[0];
		local.ip[1] = ctx->local_ip6[1];
		local.ip[2] = ctx->local_ip6[2];
		local.ip[3] = ctx->local_ip6[3];
	}
	/* Only the enrolled pod's own addresses are captured. */
	__u64 *ns = bpf_map_lookup_elem(&ambit_pod_netns, &local);
	if (!ns)
		return SK_PASS;
	key.netns = *ns;
	key.family = local.family;
	/* Made inside the namespace (ztunnel's delivery, the app itself). */
	struct peer client = {};
	__u32 r6[4] = {ctx->remote_ip6[0], ctx->remote_ip6[1],
		       ctx->remote_ip6[2], ctx->remote_ip6[3]};
	client.netns = *ns;
	set_addr(&client.a, ctx->family, ctx->remote_ip4, r6,
		 bpf_ntohs((__u16)ctx->remote_port));
	if (bpf_map_lookup_elem(&ambit_local_conns, &client))
		return SK_PASS;
	struct bpf_sock *sk = bpf_map_lookup_elem(&ambit_listeners, &key);
	if (!sk && key.family == AF_INET) {
		/* A dual-stack listener serves IPv4 too. */
		key.family = AF_INET6;
		sk = bpf_map_lookup_elem(&ambit_listeners, &key);
	}
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

SEC("sk_msg")
int ambit_sk_msg(struct sk_msg_md *msg)
{
	__u32 l6[4] = {msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2],
		       msg->local_ip6[3]};
	__u32 r6[4] = {msg->remote_ip6[0], msg->remote_ip6[1],
		       msg->remote_ip6[2], msg->remote_ip6[3]};
	struct conn_key peer = {};
	peer.netns = bpf_get_netns_cookie(msg);
	/* The peer socket sees this connection the other way round. */
	set_addr(&peer.local, msg->family, msg->remote_ip4, r6,
		 bpf_ntohs((__u16)msg->remote_port));
	set_addr(&peer.remote, msg->family, msg->local_ip4, l6,
		 msg->local_port);
	/* Without a peer in the map nothing is redirected and the bytes take
	 * the normal path. */
	bpf_msg_redirect_hash(msg, &ambit_local_socks, &peer, BPF_F_INGRESS);
	return SK_PASS;
}
