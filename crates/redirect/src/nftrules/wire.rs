//! nf_tables wire constants (`linux/netfilter/nf_tables.h`): message
//! types, flags, attribute numbers, registers, verdicts and keys, shared
//! by the in-process writer and reader and by the `nftnl` backend.

pub(crate) const ENOENT: i32 = 2;

// Message types (enum nf_tables_msg_types).
pub(crate) const NEWTABLE: u16 = 0;
pub(crate) const GETTABLE: u16 = 1;
pub(crate) const DELTABLE: u16 = 2;
pub(crate) const NEWCHAIN: u16 = 3;
pub(crate) const GETCHAIN: u16 = 4;
pub(crate) const DELCHAIN: u16 = 5;
pub(crate) const NEWRULE: u16 = 6;
pub(crate) const GETRULE: u16 = 7;
pub(crate) const DELRULE: u16 = 8;
pub(crate) const NEWSET: u16 = 9;
pub(crate) const GETSET: u16 = 10;

// Netlink flags.
pub(crate) const F_REQUEST: u16 = 0x1;
pub(crate) const F_ACK: u16 = 0x4;
pub(crate) const F_CREATE: u16 = 0x400;
pub(crate) const F_APPEND: u16 = 0x800;
pub(crate) const F_DUMP: u16 = 0x300;

// Attributes.
pub(crate) const TABLE_NAME: u16 = 1;
pub(crate) const TABLE_FLAGS: u16 = 2;
pub(crate) const TABLE_USERDATA: u16 = 6;
pub(crate) const CHAIN_TABLE: u16 = 1;
pub(crate) const CHAIN_NAME: u16 = 3;
pub(crate) const CHAIN_HOOK: u16 = 4;
pub(crate) const CHAIN_POLICY: u16 = 5;
pub(crate) const CHAIN_TYPE: u16 = 7;
/// What a chain's listing compares: hook, policy, type, flags, user data.
pub(crate) const CHAIN_KEEP: &[u16] = &[CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE, 10, 12];
pub(crate) const HOOK_HOOKNUM: u16 = 1;
pub(crate) const HOOK_PRIORITY: u16 = 2;
pub(crate) const RULE_TABLE: u16 = 1;
pub(crate) const RULE_CHAIN: u16 = 2;
pub(crate) const RULE_EXPRESSIONS: u16 = 4;
pub(crate) const RULE_USERDATA: u16 = 7;
pub(crate) const SET_TABLE: u16 = 1;
pub(crate) const SET_NAME: u16 = 2;
pub(crate) const SET_KEY_TYPE: u16 = 4;
pub(crate) const SET_KEY_LEN: u16 = 5;
pub(crate) const SET_ID: u16 = 10;
pub(crate) const SET_USERDATA: u16 = 13;
pub(crate) const UDATA_SET_KEYBYTEORDER: u8 = 0;
pub(crate) const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// What a set's listing compares: flags, key and data types and lengths,
/// policy, timeout, gc interval, user data, object type, expressions.
pub(crate) const SET_KEEP: &[u16] = &[
    3,
    SET_KEY_TYPE,
    SET_KEY_LEN,
    6,
    7,
    8,
    11,
    12,
    13,
    15,
    17,
    18,
];
pub(crate) const LIST_ELEM: u16 = 1;
pub(crate) const EXPR_NAME: u16 = 1;
pub(crate) const EXPR_DATA: u16 = 2;
pub(crate) const DATA_VALUE: u16 = 1;
pub(crate) const DATA_VERDICT: u16 = 2;
pub(crate) const VERDICT_CODE: u16 = 1;
pub(crate) const VERDICT_CHAIN: u16 = 2;

// Registers, verdicts and keys.
pub(crate) const REG_VERDICT: u32 = 0;
pub(crate) const REG_1: u32 = 1;
pub(crate) const REG_2: u32 = 2;
pub(crate) const NF_ACCEPT: i32 = 1;
pub(crate) const NFT_JUMP: i32 = -3;
pub(crate) const NFT_RETURN: i32 = -5;
pub(crate) const CMP_EQ: u32 = 0;
pub(crate) const CMP_NEQ: u32 = 1;
pub(crate) const CMP_GTE: u32 = 5;
pub(crate) const META_MARK: u32 = 3;
pub(crate) const META_IIFNAME: u32 = 6;
pub(crate) const META_OIFNAME: u32 = 7;
pub(crate) const META_SKUID: u32 = 10;
pub(crate) const META_SKGID: u32 = 11;
pub(crate) const META_NFPROTO: u32 = 15;
pub(crate) const META_L4PROTO: u32 = 16;
pub(crate) const CT_MARK: u32 = 3;
pub(crate) const CT_ZONE: u32 = 17;
pub(crate) const PAYLOAD_NETWORK: u32 = 1;
pub(crate) const PAYLOAD_TRANSPORT: u32 = 2;
pub(crate) const BYTEORDER_HTON: u32 = 1;
pub(crate) const NAT_SNAT: u32 = 0;
pub(crate) const NAT_DNAT: u32 = 1;
pub(crate) const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
pub(crate) const LOOKUP_F_INV: u32 = 1;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;
pub(crate) const IFNAMSIZ: usize = 16;
// nft's data types for set keys.
pub(crate) const TYPE_IPADDR: u32 = 7;
pub(crate) const TYPE_IP6ADDR: u32 = 8;
