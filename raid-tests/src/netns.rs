//! Network namespaces for remote-member tests: a veth pair from the root
//! namespace to a namespace the test makes, NBD servers (nbdkit) inside it
//! on ports of our choice, the link taken down and up, servers SIGKILLed
//! and restarted; everything removed when dropped (also on a panic).
//! Addresses are 10.214.ID.(4*TAG+1) outside and .(4*TAG+2) inside, where
//! ID comes from the process id and TAG tells apart the namespaces of one
//! test.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run_ok;

/// A namespace with a veth pair to it and the servers started inside.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The root namespace's end of the veth pair.
    outer: String,
    /// The address servers inside listen on.
    pub addr: String,
    /// (port, server, its arguments) of every server started inside.
    servers: Vec<(u16, Option<Child>, Vec<String>)>,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl Netns {
    /// Namespace number `tag` (0..60) of this test process.
    pub fn new(tag: u32) -> Netns {
        assert!(tag < 60, "tag {tag} out of range");
        let id = std::process::id() % 250;
        let name = format!("vraidm-{}-{tag}", std::process::id());
        let (outer, inner) = (format!("vrm{id}x{tag}a"), format!("vrm{id}x{tag}b"));
        let (o, i) = (4 * tag + 1, 4 * tag + 2);
        let ns = Netns {
            name: name.clone(),
            outer: outer.clone(),
            addr: format!("10.214.{id}.{i}"),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("10.214.{id}.{o}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", name.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("10.214.{id}.{i}/30"), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Starts `nbdkit ARGS...` inside, on `port`, and waits until it answers.
    pub fn nbdkit(&mut self, port: u16, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = self.spawn_nbdkit(port, &args);
        self.servers.push((port, Some(child), args));
        self.wait_reachable(port);
    }

    fn spawn_nbdkit(&self, port: u16, args: &[String]) -> Child {
        Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nbdkit", "-f", "-i", &self.addr,
            ])
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdkit in the namespace")
    }

    /// `nbd://ADDR:PORT/`.
    pub fn uri(&self, port: u16) -> String {
        format!("nbd://{}:{port}/", self.addr)
    }

    /// The pid of the server on `port` (for its CPU time).
    pub fn server_pid(&self, port: u16) -> Option<u32> {
        self.servers
            .iter()
            .find(|s| s.0 == port)
            .and_then(|s| s.1.as_ref().map(Child::id))
    }

    /// Waits (bounded) until a TCP connection to `port` inside succeeds.
    pub fn wait_reachable(&self, port: u16) {
        let at: SocketAddr = format!("{}:{port}", self.addr).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "{at} not reachable in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes the link down (`false`) or up.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.outer, if up { "up" } else { "down" }]);
    }

    /// SIGKILLs the server on `port` (`ip netns exec` execs nbdkit, so the
    /// child is the server itself).
    pub fn kill(&mut self, port: u16) {
        for s in self.servers.iter_mut().filter(|s| s.0 == port) {
            if let Some(mut c) = s.1.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGKILLs the server on `port` and starts it with `args` instead.
    pub fn replace(&mut self, port: u16, args: &[&str]) {
        self.kill(port);
        let at = self.servers.iter().position(|s| s.0 == port).unwrap();
        self.servers[at].2 = args.iter().map(|s| s.to_string()).collect();
        self.restart(port);
    }

    /// Starts the server on `port` again, with its arguments.
    pub fn restart(&mut self, port: u16) {
        let at = self.servers.iter().position(|s| s.0 == port).unwrap();
        let args = self.servers[at].2.clone();
        let child = self.spawn_nbdkit(port, &args);
        self.servers[at].1 = Some(child);
        self.wait_reachable(port);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.1.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Deleting the namespace removes its veth end and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .stderr(Stdio::null())
            .status();
    }
}
