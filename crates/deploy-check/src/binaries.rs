//! What the binaries accept, read from their source: every clap argument
//! (`#[arg(...)]` on a field of a `Parser` struct or of a subcommand's
//! `Args` struct) with its flag, environment name and default, plus the
//! environment variables `main.rs` reads by hand and, for binaries that
//! call `ambit_xds::NodeIdentity::from_env`, the names that reads.
//!
//! Parsing Rust source with string scanning is deliberately simple: it
//! relies on rustfmt's layout (top-level items close with `}` in column 0,
//! one field per line) and fails loudly on anything it does not expect, so
//! a new clap feature in a `main.rs` shows up here as an error rather than
//! as a silently missing name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The three binaries, under `bins/<name>/src/main.rs`.
pub const BINARY_NAMES: [&str; 3] = ["cni-node", "ztunnel", "waypoint"];

/// One clap argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    /// The Rust field name (`admin_addr`).
    pub field: String,
    /// The long flag without dashes (`admin-addr`), if it has one.
    pub long: Option<String>,
    /// The environment variable (`ADMIN_ADDRESS`), if any.
    pub env: Option<String>,
    /// The default as text, constants resolved (`127.0.0.1:15000`).
    pub default: Option<String>,
    /// No default and not an `Option`, `Vec` or `bool`: clap refuses to
    /// start without it.
    pub required: bool,
}

/// One binary's command line.
#[derive(Debug, Clone, Default)]
pub struct Binary {
    /// `cni-node`, `ztunnel` or `waypoint`.
    pub name: String,
    /// Arguments of the top-level `Parser` struct (global to subcommands).
    pub global: Vec<ArgDef>,
    /// Subcommand name (kebab case, as clap derives it) → its arguments.
    pub subcommands: BTreeMap<String, Vec<ArgDef>>,
    /// Environment variables read outside clap (`RUST_LOG`, `CNI_COMMAND`,
    /// the node identity's `POD_NAME`, …).
    pub extra_env: BTreeSet<String>,
    /// Prefixes of environment variables read as a family (`ISTIO_META_`).
    pub env_prefixes: Vec<String>,
}

impl Binary {
    /// The arguments in effect for `sub` (global ones first).
    pub fn args(&self, sub: Option<&str>) -> Vec<&ArgDef> {
        let mut v: Vec<&ArgDef> = self.global.iter().collect();
        if let Some(s) = sub.and_then(|s| self.subcommands.get(s)) {
            v.extend(s.iter());
        }
        v
    }

    /// Whether the binary reads `name` from the environment (for `sub`).
    pub fn reads_env(&self, sub: Option<&str>, name: &str) -> bool {
        self.args(sub)
            .iter()
            .any(|a| a.env.as_deref() == Some(name))
            || self.extra_env.contains(name)
            || self
                .env_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }
}

/// All three binaries.
#[derive(Debug, Clone, Default)]
pub struct Binaries {
    /// By name.
    pub bins: BTreeMap<String, Binary>,
}

impl Binaries {
    /// Reads `bins/*/src/main.rs` (and the constants they name, from
    /// `crates/*/src`) under the workspace root.
    pub fn from_workspace(root: &Path) -> Result<Self, String> {
        let mut consts = BTreeMap::new();
        for dir in list_dir(&root.join("crates"))? {
            collect_consts(&dir.join("src"), &mut consts)?;
        }
        let mut bins = BTreeMap::new();
        for name in BINARY_NAMES {
            let path = root.join("bins").join(name).join("src").join("main.rs");
            let src = read(&path)?;
            let mut local = consts.clone();
            consts_from(&src, &mut local);
            let mut bin =
                parse_binary(name, &src, &local).map_err(|e| format!("{}: {e}", path.display()))?;
            if src.contains("NodeIdentity::from_env") {
                let node = root.join("crates/xds/src/ads/node.rs");
                let (names, prefix) = node_identity_env(&read(&node)?)
                    .map_err(|e| format!("{}: {e}", node.display()))?;
                bin.extra_env.extend(names);
                bin.env_prefixes.push(prefix);
            }
            bins.insert(name.to_owned(), bin);
        }
        Ok(Self { bins })
    }

    /// The binary called `name`.
    pub fn get(&self, name: &str) -> Option<&Binary> {
        self.bins.get(name)
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// `const NAME: T = literal;` in every `.rs` file under `dir`.
fn collect_consts(dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), String> {
    if !dir.is_dir() {
        return Ok(());
    }
    for p in list_dir(dir)? {
        if p.is_dir() {
            collect_consts(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            consts_from(&read(&p)?, out);
        }
    }
    Ok(())
}

fn consts_from(src: &str, out: &mut BTreeMap<String, String>) {
    for line in src.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub ").unwrap_or(t);
        let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
        let Some(rest) = t.strip_prefix("const ") else {
            continue;
        };
        let (Some((name, _)), Some((_, value))) = (rest.split_once(':'), rest.split_once('='))
        else {
            continue;
        };
        let value = value.trim().trim_end_matches(';').trim();
        if let Some(lit) = literal(value) {
            out.insert(name.trim().to_owned(), lit);
        }
    }
}

/// A string, integer or bool literal as text; `None` for anything else.
fn literal(expr: &str) -> Option<String> {
    let e = expr.trim();
    if let Some(s) = e.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Some(s.to_owned());
    }
    if e == "true" || e == "false" {
        return Some(e.to_owned());
    }
    let e = e.replace('_', "");
    if let Some(hex) = e.strip_prefix("0x") {
        let h: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
        if h.is_empty() || !int_suffix(&hex[h.len()..]) {
            return None;
        }
        return u64::from_str_radix(&h, 16).ok().map(|n| n.to_string());
    }
    let num: String = e.chars().take_while(char::is_ascii_digit).collect();
    (!num.is_empty() && int_suffix(&e[num.len()..])).then_some(num)
}

fn int_suffix(s: &str) -> bool {
    matches!(
        s,
        "" | "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize"
    )
}

/// A top-level item: its derive list, `struct`/`enum`, name and body lines.
struct Item<'a> {
    derives: String,
    kind: &'static str,
    name: String,
    body: Vec<&'a str>,
}

fn items(src: &str) -> Vec<Item<'_>> {
    let mut out = Vec::new();
    let mut derives = String::new();
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("#[derive(") {
            derives.push_str(line);
            continue;
        }
        let head = line.strip_prefix("pub ").unwrap_or(line);
        let kind = if head.starts_with("struct ") {
            "struct"
        } else if head.starts_with("enum ") {
            "enum"
        } else {
            if !line.starts_with("#[") && !line.starts_with("///") {
                derives.clear();
            }
            continue;
        };
        let name: String = head[kind.len() + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let mut body = Vec::new();
        if line.trim_end().ends_with('{') {
            for l in lines.by_ref() {
                if l == "}" {
                    break;
                }
                body.push(l);
            }
        }
        out.push(Item {
            derives: std::mem::take(&mut derives),
            kind,
            name,
            body,
        });
    }
    out
}

/// Splits `s` at commas outside quotes and brackets.
fn split_top(s: &str) -> Vec<String> {
    let (mut parts, mut cur, mut depth, mut quoted, mut escaped) =
        (Vec::new(), String::new(), 0i32, false, false);
    for c in s.chars() {
        if quoted {
            cur.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur).trim().to_owned());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_owned());
    }
    parts
}

/// Parses the fields of a struct body into clap arguments.
fn struct_args(
    item: &Item<'_>,
    consts: &BTreeMap<String, String>,
) -> Result<(Vec<ArgDef>, bool), String> {
    let mut args = Vec::new();
    let mut has_subcommand = false;
    let mut attr: Option<String> = None;
    let mut command_attr: Option<String> = None;
    let mut pending = String::new();
    let mut depth = 0i32;
    for raw in &item.body {
        let line = raw.trim();
        if depth > 0 {
            pending.push(' ');
            pending.push_str(line);
            depth += paren_balance(line);
            if depth <= 0 {
                finish_attr(&mut pending, &mut attr, &mut command_attr);
            }
            continue;
        }
        if line.starts_with("//") || line.is_empty() {
            continue;
        }
        if line.starts_with("#[arg(") || line.starts_with("#[command(") {
            pending = line.to_owned();
            depth = paren_balance(line);
            if depth <= 0 {
                finish_attr(&mut pending, &mut attr, &mut command_attr);
            }
            continue;
        }
        if line.starts_with("#[") {
            if line.contains("clap") || line.starts_with("#[clap") {
                return Err(format!(
                    "struct {}: unsupported attribute `{line}`",
                    item.name
                ));
            }
            continue;
        }
        // A field: `[pub ]name: Type,`
        let decl = line.strip_prefix("pub ").unwrap_or(line);
        let Some((field, ty)) = decl.split_once(':') else {
            return Err(format!(
                "struct {}: cannot read field line `{line}`",
                item.name
            ));
        };
        let field = field.trim().to_owned();
        let ty = ty.trim().trim_end_matches(',').trim().to_owned();
        if let Some(c) = command_attr.take() {
            if c.contains("subcommand") {
                has_subcommand = true;
            } else {
                return Err(format!(
                    "struct {}: field {field}: unsupported `#[command({c})]` (only subcommand)",
                    item.name
                ));
            }
            attr = None;
            continue;
        }
        let a = attr.take().unwrap_or_default();
        args.push(
            arg_def(&field, &ty, &a, consts)
                .map_err(|e| format!("struct {}: field {field}: {e}", item.name))?,
        );
    }
    Ok((args, has_subcommand))
}

fn paren_balance(s: &str) -> i32 {
    let mut quoted = false;
    let mut d = 0;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => d += 1,
            ')' if !quoted => d -= 1,
            _ => {}
        }
    }
    d
}

fn finish_attr(pending: &mut String, attr: &mut Option<String>, command: &mut Option<String>) {
    let text = std::mem::take(pending);
    let inner = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|t| t.trim_end().strip_suffix(")]"))
            .map(str::to_owned)
    };
    if let Some(a) = inner("#[arg(") {
        *attr = Some(a);
    } else if let Some(c) = inner("#[command(") {
        *command = Some(c);
    }
}

fn arg_def(
    field: &str,
    ty: &str,
    attr: &str,
    consts: &BTreeMap<String, String>,
) -> Result<ArgDef, String> {
    let mut def = ArgDef {
        field: field.to_owned(),
        long: None,
        env: None,
        default: None,
        required: false,
    };
    for part in split_top(attr) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part.trim(), None),
        };
        match (key, value) {
            ("long", None) => def.long = Some(field.replace('_', "-")),
            ("long", Some(v)) => def.long = literal(v),
            ("env", Some(v)) => {
                def.env = Some(literal(v).ok_or_else(|| format!("env = {v} is not a string"))?);
            }
            ("default_value" | "default_value_t", Some(v)) => {
                let resolved = literal(v).or_else(|| {
                    let last = v.rsplit("::").next().unwrap_or(v);
                    consts.get(last).cloned()
                });
                def.default = Some(resolved.ok_or_else(|| {
                    format!("cannot resolve the default `{v}` (not a literal or a known const)")
                })?);
            }
            _ => {}
        }
    }
    let optional = ty.starts_with("Option<") || ty.starts_with("Vec<") || ty == "bool";
    def.required = !optional && def.default.is_none();
    Ok(def)
}

/// Turns `CamelCase` into `camel-case`, as clap names subcommands.
fn kebab(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_binary(
    name: &str,
    src: &str,
    consts: &BTreeMap<String, String>,
) -> Result<Binary, String> {
    let items = items(src);
    let mut structs = BTreeMap::new();
    let mut parser = None;
    let mut subcommand_enum = None;
    for item in &items {
        if item.kind == "struct"
            && (item.derives.contains("Parser") || item.derives.contains("Args"))
        {
            let parsed = struct_args(item, consts)?;
            if item.derives.contains("Parser") {
                if parser.is_some() {
                    return Err("more than one clap Parser struct".into());
                }
                parser = Some(item.name.clone());
            }
            structs.insert(item.name.clone(), parsed);
        }
        if item.kind == "enum" && item.derives.contains("Subcommand") {
            subcommand_enum = Some(item);
        }
    }
    let parser = parser.ok_or("no `#[derive(Parser)]` struct")?;
    let (global, has_sub) = structs
        .get(&parser)
        .cloned()
        .ok_or("the Parser struct vanished")?;
    let mut bin = Binary {
        name: name.to_owned(),
        global,
        ..Binary::default()
    };
    if has_sub {
        let e = subcommand_enum.ok_or("a subcommand field but no `#[derive(Subcommand)]` enum")?;
        for line in &e.body {
            let l = line.trim();
            if l.starts_with("//") || l.starts_with("#[") || l.is_empty() {
                continue;
            }
            let Some((variant, rest)) = l.split_once('(') else {
                return Err(format!("enum {}: cannot read variant `{l}`", e.name));
            };
            let ty = rest.trim_end_matches(',').trim_end_matches(')').trim();
            let (args, _) = structs
                .get(ty)
                .cloned()
                .ok_or_else(|| format!("subcommand {variant}: no Args struct {ty}"))?;
            bin.subcommands.insert(kebab(variant.trim()), args);
        }
    }
    for pat in ["var_os(\"", "env::var(\"", "try_from_env(\""] {
        for (i, _) in src.match_indices(pat) {
            let rest = &src[i + pat.len()..];
            if let Some(end) = rest.find('"') {
                bin.extra_env.insert(rest[..end].to_owned());
            }
        }
    }
    Ok(bin)
}

/// The names `NodeIdentity::from_vars` matches (`"NAME" =>`) and the
/// `ISTIO_META_PREFIX` it copies as a family.
fn node_identity_env(src: &str) -> Result<(Vec<String>, String), String> {
    let start = src
        .find("fn from_vars")
        .ok_or("no `fn from_vars` (NodeIdentity moved?)")?;
    let body = &src[start..];
    let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
    let mut names = Vec::new();
    for line in body.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix('"')
            && let Some((name, tail)) = rest.split_once('"')
            && tail.trim_start().starts_with("=>")
        {
            names.push(name.to_owned());
        }
    }
    let mut consts = BTreeMap::new();
    consts_from(src, &mut consts);
    let prefix = consts
        .get("ISTIO_META_PREFIX")
        .cloned()
        .ok_or("no ISTIO_META_PREFIX const")?;
    if names.is_empty() {
        return Err("from_vars matches no names".into());
    }
    Ok((names, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run it.
    Run(RunArgs),
    /// Install it.
    InstallAll(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    #[arg(long, env = "RUN_DIR", default_value = spec::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[arg(long, env = "MARK", default_value_t = ambit::MARK)]
    mark: u32,
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(long, value_delimiter = ',', default_value = "a,b")]
    list: Vec<String>,
    #[arg(long)]
    maybe: Option<u16>,
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {}
    let _ = EnvFilter::try_from_env("RUST_LOG");
}
"#;

    #[test]
    fn reads_clap_definitions() {
        let mut consts = BTreeMap::new();
        consts_from(
            "pub const DEFAULT_RUN_DIR: &str = \"/var/run/x\";\npub const MARK: u32 = 1337;",
            &mut consts,
        );
        let b = parse_binary("t", SRC, &consts).expect("parses");
        assert_eq!(b.global.len(), 1);
        assert_eq!(b.global[0].env.as_deref(), Some("LOG_FORMAT"));
        assert_eq!(b.global[0].default.as_deref(), Some("text"));
        let run = &b.subcommands["run"];
        assert!(b.subcommands.contains_key("install-all"));
        assert_eq!(run[0].default.as_deref(), Some("/var/run/x"));
        assert_eq!(run[1].default.as_deref(), Some("1337"));
        assert!(run[2].required && !run[3].required && !run[4].required);
        assert_eq!(run[4].long.as_deref(), Some("maybe"));
        assert!(b.extra_env.contains("CNI_COMMAND") && b.extra_env.contains("RUST_LOG"));
        assert!(b.reads_env(Some("run"), "NODE_NAME"));
        assert!(!b.reads_env(None, "NODE_NAME"));
    }

    #[test]
    fn unresolvable_default_is_an_error() {
        let src = "#[derive(Parser)]\nstruct A {\n    #[arg(long, default_value_t = nowhere::X)]\n    x: u32,\n}\n";
        let e = parse_binary("t", src, &BTreeMap::new()).expect_err("must fail");
        assert!(e.contains("nowhere::X"), "{e}");
    }

    #[test]
    fn literals() {
        assert_eq!(literal("\"a b\"").as_deref(), Some("a b"));
        assert_eq!(literal("5").as_deref(), Some("5"));
        assert_eq!(literal("86_400u64").as_deref(), Some("86400"));
        assert_eq!(literal("0x539").as_deref(), Some("1337"));
        assert_eq!(literal("true").as_deref(), Some("true"));
        assert_eq!(literal("foo::BAR"), None);
    }
}
