// WebRTC client for one phone screen: signalling over the stream WebSocket, video into a
// <video> element, input out over an ordered reliable data channel, stats for the overlay.

/** Wait until ICE gathering completes (the server takes one offer, no trickle), at most `ms`. */
function gatheringDone(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

/** Offer only `codec` (plus retransmission) on `transceiver`; throws if the browser lacks it. */
function preferCodec(transceiver, codec) {
  const all = RTCRtpReceiver.getCapabilities("video").codecs;
  const wanted = all.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
  if (!wanted.length) throw new Error(`this browser cannot receive ${codec}`);
  transceiver.setCodecPreferences([...wanted, ...all.filter((c) => c.mimeType.toLowerCase() === "video/rtx")]);
}

/**
 * The WebSocket close code with which the server ends a session whose lease ended (released,
 * expired, the phone lost): the phone is no longer this viewer's, so do not reconnect.
 */
export const CLOSE_LEASE_ENDED = 4001;

/**
 * A live phone stream. `onEnded(reason, leaseEnded)` is called once when it stops for any
 * reason; `leaseEnded` is true when the server ended it because the lease ended. `codec`
 * ("h264" or "vp8") makes the browser offer only that codec; by default it offers all it has and
 * the server picks H.264, falling back to VP8.
 */
export class PhoneStream {
  constructor(phoneId, video, { onEnded = () => {}, codec = null } = {}) {
    this.phoneId = phoneId;
    this.video = video;
    this.onEnded = onEnded;
    this.codec = codec;
    this.canSendInput = false;
    this.channel = null;
    this.pc = null;
    this.ws = null;
    this.ended = false;
    this.serverReason = null;
    this.lastStats = null;
  }

  /** Open the WebSocket, negotiate, and resolve once the answer is applied. */
  connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}/api/v1/phones/${encodeURIComponent(this.phoneId)}/stream`;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.onerror = () => reject(new Error("stream connection refused (no access to this phone?)"));
      ws.onclose = (ev) => {
        const leaseEnded = ev.code === CLOSE_LEASE_ENDED;
        this.end(ev.reason || this.serverReason || "connection closed", leaseEnded);
        if (leaseEnded) reject(new Error(ev.reason || "lease ended"));
      };
      ws.onmessage = async (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        try {
          if (msg.type === "config") {
            this.canSendInput = !!msg.input;
            await this.offer(msg.iceServers || []);
          } else if (msg.type === "answer") {
            await this.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
            resolve();
          } else if (msg.type === "error") {
            reject(new Error(msg.message));
            this.end(msg.message);
          } else if (msg.type === "ended") {
            // The close frame follows and says whether the lease ended; keep the reason for it.
            this.serverReason = msg.reason;
          }
        } catch (e) {
          reject(e);
        }
      };
    });
  }

  async offer(iceServers) {
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
    if (this.codec) preferCodec(transceiver, this.codec);
    this.channel = pc.createDataChannel("input", { ordered: true });
    pc.ontrack = (ev) => {
      this.video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      this.video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") this.end(`WebRTC ${pc.connectionState}`);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc, 2000);
    this.ws.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
  }

  /** Send one input message (see the server's input format); false if it cannot go now. */
  send(message) {
    if (!this.canSendInput || !this.channel || this.channel.readyState !== "open") return false;
    this.channel.send(JSON.stringify(message));
    return true;
  }

  /** fps, bitrate (bit/s), round-trip and jitter-buffer delay (ms) since the previous call. */
  async stats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let inbound = null;
    let rtt = null;
    const codecs = new Map();
    report.forEach((s) => {
      if (s.type === "codec") codecs.set(s.id, s.mimeType);
      if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime * 1000;
    });
    if (!inbound) return null;
    const prev = this.lastStats;
    this.lastStats = { t: inbound.timestamp, bytes: inbound.bytesReceived };
    const seconds = prev ? (inbound.timestamp - prev.t) / 1000 : 0;
    const bitrate = seconds > 0 ? ((inbound.bytesReceived - prev.bytes) * 8) / seconds : 0;
    const jitter = inbound.jitterBufferEmittedCount
      ? (inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000
      : null;
    return {
      fps: inbound.framesPerSecond || 0,
      bitrate,
      rtt,
      jitterBufferMs: jitter,
      width: inbound.frameWidth || this.video.videoWidth,
      height: inbound.frameHeight || this.video.videoHeight,
      decoded: inbound.framesDecoded || 0,
      codec: (codecs.get(inbound.codecId) || "").replace(/^video\//, "") || null,
    };
  }

  /** Stop everything (idempotent). */
  end(reason, leaseEnded = false) {
    if (this.ended) return;
    this.ended = true;
    if (this.ws && this.ws.readyState <= 1) this.ws.close();
    if (this.pc) this.pc.close();
    this.onEnded(reason, leaseEnded);
  }
}
