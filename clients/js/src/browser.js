// Entry point of the browser bundle (relay/static/client.js): the client and
// the WebRTC helper in one ES module with no bare imports.
export * from "./index.js";
export { acceptDataChannels, fetchIceServers, openDataChannel, SIGNAL_EV } from "./webrtc.js";
