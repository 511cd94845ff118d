//! The console worker: moves bytes between guest queues and port backends, and runs the
//! multiport control protocol.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::epoll::EventSet;

use super::control::{
    ControlMsg, CONSOLE_PORT, DEVICE_ADD, DEVICE_READY, HEADER_LEN, PORT_NAME, PORT_OPEN,
    PORT_READY,
};
use super::port::{Flush, Port};
use crate::{DeviceQueue, GuestMemory, VirtioInterrupt, WorkerContext, WorkerHandler};

/// Largest chunk moved per request in either direction (bounds host buffers; the guest
/// just sends or receives the rest in the next request).
pub(crate) const MAX_CHUNK: usize = 64 * 1024;
/// Control messages waiting for driver buffers; beyond this a misbehaving driver (never
/// posting control buffers while spamming PORT_READY) loses messages instead of host memory.
const MAX_PENDING_CONTROL: usize = 1024;
const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;
const LISTENER_TOKEN: u64 = 1 << 32;
const CLIENT_TOKEN: u64 = 2 << 32;

/// Queue index of port `port`'s receive queue (port 0 keeps queues 0/1, control is 2/3).
pub(crate) fn rx_queue(port: usize) -> usize {
    if port == 0 {
        0
    } else {
        2 + 2 * port
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Rx(usize),
    Tx(usize),
    ControlRx,
    ControlTx,
}

fn role(queue: usize) -> Role {
    match queue {
        0 => Role::Rx(0),
        1 => Role::Tx(0),
        CTRL_RX => Role::ControlRx,
        CTRL_TX => Role::ControlTx,
        q if q % 2 == 0 => Role::Rx(q / 2 - 1),
        q => Role::Tx(q / 2 - 1),
    }
}

/// The port table; a poisoned lock still holds usable ports.
pub(super) fn lock_ports(ports: &Mutex<Vec<Port>>) -> MutexGuard<'_, Vec<Port>> {
    ports.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct PortState {
    /// Client input read but not yet delivered (no guest buffer was available).
    rx_pending: Vec<u8>,
}

pub(crate) struct ConsoleHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Option<DeviceQueue>>,
    ports: Arc<Mutex<Vec<Port>>>,
    state: Vec<PortState>,
    multiport: bool,
    control_out: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

impl ConsoleHandler {
    pub(crate) fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Option<DeviceQueue>>,
        ports: Arc<Mutex<Vec<Port>>>,
        multiport: bool,
        restored: bool,
    ) -> Self {
        let n = ports.lock().map_or(0, |p| p.len());
        let mut handler = Self {
            mem,
            interrupt,
            queues,
            ports,
            state: (0..n).map(|_| PortState::default()).collect(),
            multiport,
            control_out: VecDeque::new(),
            buf: vec![0; MAX_CHUNK],
        };
        if restored && multiport {
            handler.announce_host_side();
        }
        handler
    }

    /// After a restore the host side of every port belongs to this process (socket clients
    /// of the old one are gone): tell the driver the open state of each port it set up.
    fn announce_host_side(&mut self) {
        let ready: Vec<(usize, bool)> = self
            .ports()
            .iter()
            .enumerate()
            .filter(|(_, p)| p.guest_ready)
            .map(|(id, p)| (id, p.host_connected()))
            .collect();
        for (id, connected) in ready {
            self.send_control(id, PORT_OPEN, u16::from(connected), &[]);
        }
    }

    fn ports(&self) -> MutexGuard<'_, Vec<Port>> {
        lock_ports(&self.ports)
    }

    /// Ports this activation serves: all with MULTIPORT, port 0 otherwise.
    fn active_ports(&self) -> usize {
        if self.multiport {
            self.state.len()
        } else {
            1
        }
    }

    fn slot(&mut self, queue: usize) -> Option<&mut DeviceQueue> {
        self.queues.get_mut(queue).and_then(Option::as_mut)
    }

    fn send_control(&mut self, id: usize, event: u16, value: u16, payload: &[u8]) {
        if self.control_out.len() >= MAX_PENDING_CONTROL {
            crate::guest_warn!(
                id,
                event,
                "console control queue full (driver not reading); message dropped"
            );
            return;
        }
        self.control_out
            .push_back(ControlMsg::encode(id as u32, event, value, payload));
    }

    fn flush_control(&mut self) -> Result<(), String> {
        let mem = self.mem.clone();
        let interrupt = self.interrupt.clone();
        while let Some(msg) = self.control_out.front() {
            let Some(slot) = self.queues.get_mut(CTRL_RX).and_then(Option::as_mut) else {
                return Ok(());
            };
            let Some(chain) = slot.pop(&mem)? else {
                return Ok(());
            };
            let written = chain.scatter(&mem, msg)?;
            if (written as usize) < msg.len() {
                crate::guest_warn!(
                    written,
                    len = msg.len(),
                    "control buffer too small; message truncated"
                );
            }
            slot.complete(&mem, interrupt.as_ref(), chain.head(), written)?;
            self.control_out.pop_front();
        }
        Ok(())
    }

    fn process_control_tx(&mut self) -> Result<(), String> {
        let mem = self.mem.clone();
        let interrupt = self.interrupt.clone();
        let mut msgs = Vec::new();
        if let Some(slot) = self.slot(CTRL_TX) {
            while let Some(chain) = slot.pop(&mem)? {
                let head = chain.head();
                let mut bytes = Vec::with_capacity(HEADER_LEN);
                chain.gather(&mem, HEADER_LEN, &mut bytes)?;
                let msg = ControlMsg::parse(&bytes).ok_or_else(|| {
                    format!("console control message {head} is {} bytes, shorter than its 8-byte header", bytes.len())
                })?;
                slot.complete(&mem, interrupt.as_ref(), head, 0)?;
                msgs.push(msg);
            }
        }
        for msg in msgs {
            self.handle_control(msg);
        }
        self.flush_control()
    }

    fn handle_control(&mut self, msg: ControlMsg) {
        let id = msg.id as usize;
        match msg.event {
            DEVICE_READY if msg.value == 1 => {
                for port in 0..self.state.len() {
                    self.send_control(port, DEVICE_ADD, 1, &[]);
                }
            }
            DEVICE_READY => crate::guest_log!(error, "guest console driver failed to initialise"),
            PORT_READY | PORT_OPEN if id >= self.state.len() => {
                crate::guest_warn!(
                    id,
                    event = msg.event,
                    "control message for a port that does not exist; ignored"
                );
            }
            PORT_READY if msg.value == 1 => {
                let (console, name, connected) = {
                    let mut ports = self.ports();
                    ports[id].guest_ready = true;
                    (
                        ports[id].console,
                        ports[id].name.clone(),
                        ports[id].host_connected(),
                    )
                };
                if console {
                    self.send_control(id, CONSOLE_PORT, 1, &[]);
                }
                if let Some(name) = name {
                    self.send_control(id, PORT_NAME, 1, name.as_bytes());
                }
                self.send_control(id, PORT_OPEN, u16::from(connected), &[]);
            }
            PORT_READY => crate::guest_warn!(id, "guest failed to set up console port"),
            // Host input is delivered whether or not a guest program has the port open (the
            // guest driver buffers it), so the guest's open/close is informational.
            PORT_OPEN => {
                tracing::debug!(id, open = msg.value, "guest opened/closed a console port")
            }
            event => tracing::debug!(id, event, "console control event ignored"),
        }
    }

    /// Deliver buffered client input to the guest; returns whether everything went out.
    fn deliver_rx(&mut self, port: usize) -> Result<bool, String> {
        let mem = self.mem.clone();
        let interrupt = self.interrupt.clone();
        let q = rx_queue(port);
        let mut pending = std::mem::take(&mut self.state[port].rx_pending);
        let result = (|| {
            let Some(slot) = self.queues.get_mut(q).and_then(Option::as_mut) else {
                pending.clear(); // the driver did not set up this port: input is dropped
                return Ok(());
            };
            while !pending.is_empty() {
                let Some(chain) = slot.pop(&mem)? else {
                    break;
                };
                let n = chain.scatter(&mem, &pending)?;
                pending.drain(..n as usize);
                slot.complete(&mem, interrupt.as_ref(), chain.head(), n)?;
            }
            Ok::<(), String>(())
        })();
        let done = pending.is_empty();
        self.state[port].rx_pending = pending;
        result.map(|()| done)
    }

    /// Watch the client for input only when nothing is waiting for guest buffers, and for
    /// output space only when output is waiting.
    fn update_client_interest(&mut self, ctx: &WorkerContext, port: usize) {
        let ports = self.ports();
        let Some(fd) = ports[port].client_fd() else {
            return;
        };
        let mut events = EventSet::empty();
        if self.state[port].rx_pending.is_empty() {
            events |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if ports[port].tx_blocked() {
            events |= EventSet::OUT;
        }
        if let Err(e) = ctx.modify(fd, events, CLIENT_TOKEN | port as u64) {
            crate::guest_warn!(port, error = %e, "cannot update console client polling");
        }
    }

    fn client_event(
        &mut self,
        ctx: &WorkerContext,
        port: usize,
        events: EventSet,
    ) -> Result<(), String> {
        if events.contains(EventSet::OUT) {
            let flushed = self.ports()[port].flush();
            match flushed {
                Flush::Done => self.process_tx(ctx, port)?,
                Flush::Blocked => {}
                Flush::Disconnected => return self.disconnect(ctx, port),
            }
        }
        let hung_up = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if hung_up && !self.state[port].rx_pending.is_empty() {
            // HUP is reported even when not asked for; with input still waiting for the guest
            // we would spin. The client is gone: drop it (and its undelivered input).
            return self.disconnect(ctx, port);
        }
        if (events.intersects(EventSet::IN | EventSet::READ_HANG_UP) || hung_up)
            && self.state[port].rx_pending.is_empty()
        {
            let read = {
                let mut ports = lock_ports(&self.ports);
                ports[port].read_input(&mut self.buf)
            };
            match read {
                Ok(0) => return self.disconnect(ctx, port),
                Ok(n) => {
                    self.state[port]
                        .rx_pending
                        .extend_from_slice(&self.buf[..n]);
                    self.deliver_rx(port)?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::info!(port, error = %e, "console client read failed; disconnecting");
                    return self.disconnect(ctx, port);
                }
            }
        }
        self.update_client_interest(ctx, port);
        self.flush_control()
    }

    fn disconnect(&mut self, ctx: &WorkerContext, port: usize) -> Result<(), String> {
        let mut ports = lock_ports(&self.ports);
        if let Some(fd) = ports[port].client_fd() {
            let _ = ctx.remove(fd);
        }
        ports[port].disconnect();
        drop(ports);
        tracing::info!(port, "console client disconnected");
        self.state[port].rx_pending.clear();
        if self.multiport && self.ports()[port].guest_ready {
            self.send_control(port, PORT_OPEN, 0, &[]);
        }
        // Output that waited for this client can now be drained (and dropped).
        self.process_tx(ctx, port)?;
        self.flush_control()
    }

    fn accept(&mut self, ctx: &WorkerContext, port: usize) -> Result<(), String> {
        let accepted = self.ports().get_mut(port).map(Port::accept);
        let replaced = match accepted {
            Some(Ok(Some(replaced))) => replaced,
            Some(Ok(None)) | None => return Ok(()),
            Some(Err(e)) => {
                crate::guest_warn!(port, error = %e, "accepting a console client failed");
                return Ok(());
            }
        };
        if let Some(old) = replaced {
            tracing::info!(port, "new console client replaces the previous one");
            let _ = ctx.remove(old);
        }
        self.state[port].rx_pending.clear();
        if let Some(fd) = self.ports()[port].client_fd() {
            ctx.add(
                fd,
                EventSet::IN | EventSet::READ_HANG_UP,
                CLIENT_TOKEN | port as u64,
            )
            .map_err(|e| format!("cannot poll console client on port {port}: {e}"))?;
        }
        tracing::info!(port, "console client connected");
        if self.multiport && self.ports()[port].guest_ready {
            self.send_control(port, PORT_OPEN, 1, &[]);
        }
        self.flush_control()
    }

    /// Drain the port's transmit queue into its backend, stopping while a socket client
    /// cannot take more.
    fn process_tx(&mut self, ctx: &WorkerContext, port: usize) -> Result<(), String> {
        let mem = self.mem.clone();
        let interrupt = self.interrupt.clone();
        let q = rx_queue(port) + 1;
        let mut data = Vec::new();
        loop {
            if self.ports()[port].tx_blocked() {
                break;
            }
            let Some(slot) = self.queues.get_mut(q).and_then(Option::as_mut) else {
                break;
            };
            let Some(chain) = slot.pop(&mem)? else {
                break;
            };
            data.clear();
            let offered = chain.gather(&mem, MAX_CHUNK, &mut data)?;
            if offered > MAX_CHUNK as u64 {
                crate::guest_warn!(
                    port,
                    offered,
                    "console output request over 64 KiB; excess dropped"
                );
            }
            // Output first, then return the buffer: once the guest sees it used, its bytes
            // are out (ordering with emergency writes and with other ports holds).
            let flushed = lock_ports(&self.ports)[port].write_output(&data);
            slot.complete(&mem, interrupt.as_ref(), chain.head(), 0)?;
            if flushed == Flush::Disconnected {
                return self.disconnect(ctx, port);
            }
        }
        self.update_client_interest(ctx, port);
        Ok(())
    }
}

impl WorkerHandler for ConsoleHandler {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        for (index, slot) in self.queues.iter().enumerate() {
            if let Some(slot) = slot {
                slot.watch(ctx, index as u64)?;
            }
        }
        let ports = self.ports();
        for (port, p) in ports.iter().enumerate().take(self.active_ports()) {
            if let Some(fd) = p.listener_fd() {
                ctx.add(fd, EventSet::IN, LISTENER_TOKEN | port as u64)?;
            }
            if let Some(fd) = p.client_fd() {
                ctx.add(
                    fd,
                    EventSet::IN | EventSet::READ_HANG_UP,
                    CLIENT_TOKEN | port as u64,
                )?;
            }
        }
        drop(ports);
        self.flush_control().map_err(std::io::Error::other)
    }

    fn handle(&mut self, ctx: &WorkerContext, token: u64, events: EventSet) -> Result<(), String> {
        let index = (token & 0xffff_ffff) as usize;
        match token & !0xffff_ffff {
            LISTENER_TOKEN => return self.accept(ctx, index),
            CLIENT_TOKEN => return self.client_event(ctx, index, events),
            _ => {}
        }
        if let Some(slot) = self.slot(index) {
            slot.ack_notify();
        }
        match role(index) {
            Role::ControlRx => self.flush_control(),
            Role::ControlTx => self.process_control_tx(),
            Role::Rx(port) if port < self.state.len() => {
                self.deliver_rx(port)?;
                self.update_client_interest(ctx, port);
                Ok(())
            }
            Role::Tx(port) if port < self.state.len() => self.process_tx(ctx, port),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_roles() {
        assert_eq!(role(0), Role::Rx(0));
        assert_eq!(role(1), Role::Tx(0));
        assert_eq!(role(2), Role::ControlRx);
        assert_eq!(role(3), Role::ControlTx);
        assert_eq!(role(4), Role::Rx(1));
        assert_eq!(role(5), Role::Tx(1));
        assert_eq!(role(9), Role::Tx(3));
        for port in 0..8 {
            assert_eq!(role(rx_queue(port)), Role::Rx(port));
            assert_eq!(role(rx_queue(port) + 1), Role::Tx(port));
        }
    }
}
