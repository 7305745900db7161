// Microphone recording as a 16-bit PCM WAV file, with Web Audio only.
// MediaRecorder gives WebM/Opus or MP4/AAC; the recording is decoded in the
// browser (AudioContext.decodeAudioData) and written as WAV, which every
// fusionserve version decodes.
"use strict";

const WavRecorder = (() => {
  function encodeWav(samples, sampleRate) {
    const bytes = new ArrayBuffer(44 + samples.length * 2);
    const view = new DataView(bytes);
    const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
    text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
    text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, sampleRate, true); view.setUint32(28, sampleRate * 2, true);
    view.setUint16(32, 2, true); view.setUint16(34, 16, true);
    text(36, "data"); view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Blob([bytes], { type: "audio/wav" });
  }

  function mixDown(buffer) {
    const out = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const data = buffer.getChannelData(c);
      for (let i = 0; i < data.length; i++) out[i] += data[i] / buffer.numberOfChannels;
    }
    return out;
  }

  async function toWav(blob) {
    const context = new (window.AudioContext || window.webkitAudioContext)();
    try {
      const decoded = await context.decodeAudioData(await blob.arrayBuffer());
      return encodeWav(mixDown(decoded), decoded.sampleRate);
    } finally {
      context.close();
    }
  }

  async function start() {
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      throw new Error("this browser cannot record audio (needs MediaRecorder over https or localhost)");
    }
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
    const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
    recorder.start();
    return {
      async stop() {
        recorder.stop();
        await stopped;
        stream.getTracks().forEach((t) => t.stop());
        return toWav(new Blob(chunks, { type: recorder.mimeType }));
      },
    };
  }

  return { start, encodeWav, toWav };
})();
