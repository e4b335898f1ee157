//! The master's command language: one command per line, parsed without any I/O.
//!
//! Syntax (SPEC §2): a line is split into tokens on ASCII whitespace; the first
//! token is the command name (case-sensitive, spelled exactly as in the seed) and
//! the rest are its arguments. Ids are non-negative integers (`u64`) in one
//! namespace shared by servers and clients; keys and values are single tokens.
//! A blank line, or one whose first non-whitespace character is `#`, is not a
//! command. [`Command`]'s `Display` renders the canonical form of a command, which
//! [`parse_line`] reads back unchanged.

use std::fmt;

/// One command of a master script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `joinServer ID`: start (or restart) server `id` and connect it to every live server.
    JoinServer { id: u64 },
    /// `killServer ID`: SIGKILL server `id` and wait until it is gone.
    KillServer { id: u64 },
    /// `joinClient ID SID`: start client `id` connected to server `server`.
    JoinClient { id: u64, server: u64 },
    /// `breakConnection A B`: break the link between `a` and `b` (either order).
    BreakConnection { a: u64, b: u64 },
    /// `createConnection A B`: create or restore the link between `a` and `b`.
    CreateConnection { a: u64, b: u64 },
    /// `stabilize`: wait until every connected component of live servers has identical stores.
    Stabilize,
    /// `printStore SID`: print server `id`'s store, one `key:value` line per key.
    PrintStore { id: u64 },
    /// `put CID KEY VALUE`: client `client` writes `value` under `key`.
    Put {
        client: u64,
        key: String,
        value: String,
    },
    /// `get CID KEY`: client `client` reads `key` and prints `KEY:VALUE`, `KEY:ERR_KEY` or `KEY:ERR_DEP`.
    Get { client: u64, key: String },
}

/// Why a line is not a valid command. Every message is a single line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The first token is not one of the known command names (names are case-sensitive).
    #[error("unknown command `{name}` (expected one of: {})", COMMAND_NAMES.join(", "))]
    UnknownCommand {
        /// The offending first token, as written.
        name: String,
    },
    /// The command got the wrong number of arguments.
    #[error("{command}: expected `{usage}`, got {got} argument{}", if *.got == 1 { "" } else { "s" })]
    WrongArgCount {
        /// The command name.
        command: &'static str,
        /// The command's usage line, e.g. `put CLIENT KEY VALUE`.
        usage: &'static str,
        /// How many arguments were given.
        got: usize,
    },
    /// An id argument is not a non-negative integer that fits in 64 bits.
    #[error(
        "{command}: {what} must be a non-negative integer, got `{token}` (expected `{usage}`)"
    )]
    BadId {
        /// The command name.
        command: &'static str,
        /// The command's usage line.
        usage: &'static str,
        /// Which argument was bad, e.g. `CLIENT`.
        what: &'static str,
        /// The argument as written.
        token: String,
    },
}

/// The command names, in the order of the seed's table.
pub const COMMAND_NAMES: [&str; 9] = [
    "joinServer",
    "killServer",
    "joinClient",
    "breakConnection",
    "createConnection",
    "stabilize",
    "printStore",
    "put",
    "get",
];

/// Parses one line of a master script.
///
/// Returns `Ok(None)` for a blank line or a comment (first non-whitespace
/// character `#`), `Ok(Some(cmd))` for a valid command, and an error with a
/// one-line message otherwise.
pub fn parse_line(line: &str) -> Result<Option<Command>, ParseError> {
    let mut tokens = line.split_ascii_whitespace();
    let Some(name) = tokens.next() else {
        return Ok(None);
    };
    if name.starts_with('#') {
        return Ok(None);
    }
    let args: Vec<&str> = tokens.collect();
    let cmd = match name {
        "joinServer" => {
            let usage = "joinServer ID";
            let [id] = arity("joinServer", usage, &args)?;
            Command::JoinServer {
                id: id_arg("joinServer", usage, "ID", id)?,
            }
        }
        "killServer" => {
            let usage = "killServer ID";
            let [id] = arity("killServer", usage, &args)?;
            Command::KillServer {
                id: id_arg("killServer", usage, "ID", id)?,
            }
        }
        "joinClient" => {
            let usage = "joinClient ID SERVER";
            let [id, server] = arity("joinClient", usage, &args)?;
            Command::JoinClient {
                id: id_arg("joinClient", usage, "ID", id)?,
                server: id_arg("joinClient", usage, "SERVER", server)?,
            }
        }
        "breakConnection" => {
            let usage = "breakConnection A B";
            let [a, b] = arity("breakConnection", usage, &args)?;
            Command::BreakConnection {
                a: id_arg("breakConnection", usage, "A", a)?,
                b: id_arg("breakConnection", usage, "B", b)?,
            }
        }
        "createConnection" => {
            let usage = "createConnection A B";
            let [a, b] = arity("createConnection", usage, &args)?;
            Command::CreateConnection {
                a: id_arg("createConnection", usage, "A", a)?,
                b: id_arg("createConnection", usage, "B", b)?,
            }
        }
        "stabilize" => {
            let [] = arity("stabilize", "stabilize", &args)?;
            Command::Stabilize
        }
        "printStore" => {
            let usage = "printStore ID";
            let [id] = arity("printStore", usage, &args)?;
            Command::PrintStore {
                id: id_arg("printStore", usage, "ID", id)?,
            }
        }
        "put" => {
            let usage = "put CLIENT KEY VALUE";
            let [client, key, value] = arity("put", usage, &args)?;
            Command::Put {
                client: id_arg("put", usage, "CLIENT", client)?,
                key: key.to_owned(),
                value: value.to_owned(),
            }
        }
        "get" => {
            let usage = "get CLIENT KEY";
            let [client, key] = arity("get", usage, &args)?;
            Command::Get {
                client: id_arg("get", usage, "CLIENT", client)?,
                key: key.to_owned(),
            }
        }
        _ => {
            return Err(ParseError::UnknownCommand {
                name: name.to_owned(),
            })
        }
    };
    Ok(Some(cmd))
}

/// Checks that exactly `N` arguments were given and returns them.
fn arity<'a, const N: usize>(
    command: &'static str,
    usage: &'static str,
    args: &[&'a str],
) -> Result<[&'a str; N], ParseError> {
    <[&str; N]>::try_from(args).map_err(|_| ParseError::WrongArgCount {
        command,
        usage,
        got: args.len(),
    })
}

/// Parses a non-negative decimal id. Only ASCII digits are accepted (no sign).
fn id_arg(
    command: &'static str,
    usage: &'static str,
    what: &'static str,
    token: &str,
) -> Result<u64, ParseError> {
    let bad = || ParseError::BadId {
        command,
        usage,
        what,
        token: token.to_owned(),
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    token.parse().map_err(|_| bad())
}

impl Command {
    /// The command's name as written in scripts.
    pub fn name(&self) -> &'static str {
        match self {
            Command::JoinServer { .. } => "joinServer",
            Command::KillServer { .. } => "killServer",
            Command::JoinClient { .. } => "joinClient",
            Command::BreakConnection { .. } => "breakConnection",
            Command::CreateConnection { .. } => "createConnection",
            Command::Stabilize => "stabilize",
            Command::PrintStore { .. } => "printStore",
            Command::Put { .. } => "put",
            Command::Get { .. } => "get",
        }
    }
}

impl fmt::Display for Command {
    /// Renders the canonical script line (single spaces, no trailing newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Command::JoinServer { id }
            | Command::KillServer { id }
            | Command::PrintStore { id } => {
                write!(f, "{name} {id}")
            }
            Command::JoinClient { id, server } => write!(f, "{name} {id} {server}"),
            Command::BreakConnection { a, b } | Command::CreateConnection { a, b } => {
                write!(f, "{name} {a} {b}")
            }
            Command::Stabilize => f.write_str(name),
            Command::Put { client, key, value } => write!(f, "{name} {client} {key} {value}"),
            Command::Get { client, key } => write!(f, "{name} {client} {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(line: &str) -> Command {
        parse_line(line)
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            .unwrap_or_else(|| panic!("{line:?}: parsed as blank"))
    }

    fn err(line: &str) -> ParseError {
        match parse_line(line) {
            Err(e) => e,
            Ok(c) => panic!("{line:?} parsed as {c:?}"),
        }
    }

    #[test]
    fn every_command() {
        assert_eq!(ok("joinServer 0"), Command::JoinServer { id: 0 });
        assert_eq!(ok("killServer 17"), Command::KillServer { id: 17 });
        assert_eq!(
            ok("joinClient 5 0"),
            Command::JoinClient { id: 5, server: 0 }
        );
        assert_eq!(
            ok("breakConnection 1 2"),
            Command::BreakConnection { a: 1, b: 2 }
        );
        assert_eq!(
            ok("createConnection 2 1"),
            Command::CreateConnection { a: 2, b: 1 }
        );
        assert_eq!(ok("stabilize"), Command::Stabilize);
        assert_eq!(ok("printStore 3"), Command::PrintStore { id: 3 });
        assert_eq!(
            ok("put 5 k v"),
            Command::Put {
                client: 5,
                key: "k".into(),
                value: "v".into()
            }
        );
        assert_eq!(
            ok("get 5 k"),
            Command::Get {
                client: 5,
                key: "k".into()
            }
        );
    }

    #[test]
    fn blank_and_comment_lines() {
        for line in [
            "",
            " ",
            "\t\t",
            "\r",
            "\n",
            "# a comment",
            "   #indented comment",
            "\t# tab then comment",
            "#joinServer 1",
            "#",
        ] {
            assert_eq!(parse_line(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn whitespace_is_flexible() {
        assert_eq!(
            ok("  put\t5   key\t\tvalue  \r"),
            Command::Put {
                client: 5,
                key: "key".into(),
                value: "value".into()
            }
        );
        assert_eq!(ok("stabilize   "), Command::Stabilize);
        assert_eq!(ok("\tjoinServer\t42\r\n"), Command::JoinServer { id: 42 });
    }

    #[test]
    fn keys_and_values_are_opaque_tokens() {
        assert_eq!(
            ok("put 1 a:b #c"),
            Command::Put {
                client: 1,
                key: "a:b".into(),
                value: "#c".into()
            }
        );
        assert_eq!(
            ok("get 1 ключ"),
            Command::Get {
                client: 1,
                key: "ключ".into()
            }
        );
        // Key and value that look like numbers or command names stay strings.
        assert_eq!(
            ok("put 1 get 007"),
            Command::Put {
                client: 1,
                key: "get".into(),
                value: "007".into()
            }
        );
    }

    #[test]
    fn ids_are_u64() {
        assert_eq!(
            ok("joinServer 18446744073709551615"),
            Command::JoinServer { id: u64::MAX }
        );
        assert_eq!(ok("joinServer 007"), Command::JoinServer { id: 7 });
        for bad in [
            "-1",
            "+1",
            "1.0",
            "x",
            "18446744073709551616",
            "0x10",
            "1_000",
            "١",
        ] {
            let e = err(&format!("joinServer {bad}"));
            assert!(
                matches!(&e, ParseError::BadId { command: "joinServer", token, .. } if token == bad),
                "{bad}: {e:?}"
            );
        }
        let e = err("joinClient 1 two");
        assert!(
            matches!(e, ParseError::BadId { what: "SERVER", .. }),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_arg_counts() {
        let e = err("put 5 k");
        assert_eq!(
            e,
            ParseError::WrongArgCount {
                command: "put",
                usage: "put CLIENT KEY VALUE",
                got: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "put: expected `put CLIENT KEY VALUE`, got 2 arguments"
        );
        assert_eq!(
            err("stabilize now").to_string(),
            "stabilize: expected `stabilize`, got 1 argument"
        );
        for (line, cmd, got) in [
            ("joinServer", "joinServer", 0),
            ("joinServer 1 2", "joinServer", 2),
            ("killServer", "killServer", 0),
            ("joinClient 1", "joinClient", 1),
            ("breakConnection 1 2 3", "breakConnection", 3),
            ("createConnection", "createConnection", 0),
            ("printStore 1 2", "printStore", 2),
            ("put 1 k v extra", "put", 4),
            ("get 1", "get", 1),
            ("get 1 k v", "get", 3),
        ] {
            match err(line) {
                ParseError::WrongArgCount {
                    command, got: g, ..
                } => {
                    assert_eq!((command, g), (cmd, got), "{line}");
                }
                e => panic!("{line}: {e:?}"),
            }
        }
        // The arity is checked before the ids.
        assert!(matches!(
            err("joinClient x"),
            ParseError::WrongArgCount { got: 1, .. }
        ));
    }

    #[test]
    fn unknown_commands_are_case_sensitive() {
        for line in [
            "frobnicate 1",
            "JoinServer 1",
            "joinserver 1",
            "PUT 1 k v",
            "Get 1 k",
            "print 1",
            "stabilise",
        ] {
            let e = err(line);
            let name = line.split_whitespace().next().unwrap();
            assert_eq!(
                e,
                ParseError::UnknownCommand {
                    name: name.to_owned()
                }
            );
            let msg = e.to_string();
            assert!(msg.contains(name) && msg.contains("joinServer"), "{msg}");
        }
        // A comment marker is only special at the start of the line.
        assert!(matches!(
            err("put 1 k v # trailing"),
            ParseError::WrongArgCount { got: 5, .. }
        ));
    }

    #[test]
    fn messages_are_one_line_and_name_the_command() {
        for line in [
            "put 1 k",
            "get x k",
            "nope",
            "joinClient 1 -2",
            "printStore",
            "stabilize 1",
        ] {
            let msg = err(line).to_string();
            assert!(!msg.contains('\n'), "{msg:?}");
            let name = line.split_whitespace().next().unwrap();
            assert!(msg.contains(name), "{line}: {msg}");
        }
        assert_eq!(
            err("get x k").to_string(),
            "get: CLIENT must be a non-negative integer, got `x` (expected `get CLIENT KEY`)"
        );
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(ok("  put  5\tk  v ").to_string(), "put 5 k v");
        assert_eq!(ok("stabilize").to_string(), "stabilize");
        assert_eq!(ok("joinClient 007 3").to_string(), "joinClient 7 3");
        assert_eq!(ok("breakConnection 2 1").to_string(), "breakConnection 2 1");
        assert_eq!(ok("printStore 9").to_string(), "printStore 9");
        assert_eq!(ok("get 4 kk").to_string(), "get 4 kk");
    }

    /// A key or value token: non-empty, no ASCII whitespace, may be any other char.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_:#./-]{1,12}",
            any::<String>()
                .prop_map(|s| s
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect::<String>())
                .prop_filter("non-empty", |s| !s.is_empty()),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any::<u64>().prop_map(|id| Command::JoinServer { id }),
            any::<u64>().prop_map(|id| Command::KillServer { id }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(id, server)| Command::JoinClient { id, server }),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Command::BreakConnection { a, b }),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Command::CreateConnection { a, b }),
            Just(Command::Stabilize),
            any::<u64>().prop_map(|id| Command::PrintStore { id }),
            (any::<u64>(), token(), token()).prop_map(|(client, key, value)| Command::Put {
                client,
                key,
                value
            }),
            (any::<u64>(), token()).prop_map(|(client, key)| Command::Get { client, key }),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(cmd in command()) {
            let line = cmd.to_string();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(parse_line(&line), Ok(Some(cmd.clone())));
            // Surrounding whitespace does not matter either.
            prop_assert_eq!(parse_line(&format!(" \t{line}\t \r")), Ok(Some(cmd)));
        }

        #[test]
        fn garbage_never_panics(line in any::<String>()) {
            match parse_line(&line) {
                Ok(Some(cmd)) => {
                    // Whatever parsed must re-parse to the same command.
                    prop_assert_eq!(parse_line(&cmd.to_string()), Ok(Some(cmd)));
                }
                Ok(None) => {
                    let t = line.trim_start_matches(|c: char| c.is_ascii_whitespace());
                    prop_assert!(t.is_empty() || t.starts_with('#'));
                }
                Err(e) => prop_assert!(!e.to_string().contains('\n')),
            }
        }

        #[test]
        fn near_miss_lines_never_panic(
            name in prop::sample::select(COMMAND_NAMES.to_vec()),
            args in prop::collection::vec(
                prop_oneof!["-?[0-9]{1,25}", "[a-z]{1,3}", Just(String::new())],
                0..6,
            ),
            sep in "[ \t]{1,3}",
        ) {
            let line = std::iter::once(name.to_owned()).chain(args).collect::<Vec<_>>().join(&sep);
            match parse_line(&line) {
                Ok(Some(cmd)) => prop_assert_eq!(cmd.name(), name),
                Ok(None) => prop_assert!(false, "{line:?} parsed as blank"),
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(name), "{}", msg);
                    prop_assert!(!msg.contains('\n'));
                }
            }
        }
    }
}
