/* Declarations the capture programs need, written for Ambit against the
 * kernel's UAPI header: helper numbers come from enum bpf_func_id, map
 * definitions use the BTF layout loaders (aya, libbpf) understand. */
#ifndef AMBIT_BPF_HELPERS_H
#define AMBIT_BPF_HELPERS_H

#include <linux/types.h>
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

/* BTF map definition fields. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) =
	(void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key,
				   const void *value, __u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static long (*bpf_map_delete_elem)(void *map, const void *key) =
	(void *)BPF_FUNC_map_delete_elem;
static __u64 (*bpf_get_socket_cookie)(void *ctx) =
	(void *)BPF_FUNC_get_socket_cookie;
static __u64 (*bpf_get_netns_cookie)(void *ctx) =
	(void *)BPF_FUNC_get_netns_cookie;
static long (*bpf_sock_hash_update)(struct bpf_sock_ops *skops, void *map,
				    void *key, __u64 flags) =
	(void *)BPF_FUNC_sock_hash_update;
static long (*bpf_sk_assign)(void *ctx, struct bpf_sock *sk, __u64 flags) =
	(void *)BPF_FUNC_sk_assign;
static long (*bpf_sk_release)(void *sk) = (void *)BPF_FUNC_sk_release;
static long (*bpf_msg_redirect_hash)(struct sk_msg_md *msg, void *map,
				     void *key, __u64 flags) =
	(void *)BPF_FUNC_msg_redirect_hash;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bpf_htons(x) __builtin_bswap16(x)
#define bpf_htonl(x) __builtin_bswap32(x)
#else
#define bpf_htons(x) (x)
#define bpf_htonl(x) (x)
#endif
#define bpf_ntohs(x) bpf_htons(x)
#define bpf_ntohl(x) bpf_htonl(x)

#endif
