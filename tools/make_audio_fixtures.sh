#!/usr/bin/env bash
# Remakes the input-audio fixtures of crates/musicgen/tests/engine/audio_files.rs with ffmpeg
# (libmp3lame, libvorbis): 0.2 s of a 440 Hz sine, left at amplitude 0.5 and right at 0.25 (so a
# mono mix is 0.375), at 44.1 kHz stereo and at 16 kHz mono (0.5), in each format the engine
# reads, plus an MP3 without the Xing header that declares its length (the length limit checked
# while decoding). Bad files (empty, truncated, corrupt, not audio, 0 channels) are made by the
# tests themselves from these.
set -euo pipefail
out="$(dirname "$0")/../crates/musicgen/tests/fixtures/audio"
mkdir -p "$out"
stereo="aevalsrc=0.5*sin(2*PI*440*t)|0.25*sin(2*PI*440*t):s=44100:d=0.2"
mono="aevalsrc=0.5*sin(2*PI*440*t):s=16000:d=0.2"
ff() { ffmpeg -hide_banner -loglevel error -y -bitexact -f lavfi -i "$1" -map_metadata -1 "${@:2}"; }
ff "$stereo" -c:a pcm_s16le "$out/sine_44k1_stereo.wav"
ff "$stereo" -c:a flac "$out/sine_44k1_stereo.flac"
ff "$mono" -c:a flac "$out/sine_16k_mono.flac"
ff "$stereo" -c:a libmp3lame -b:a 128k "$out/sine_44k1_stereo.mp3"
ff "$stereo" -c:a libmp3lame -b:a 128k -write_xing 0 "$out/sine_44k1_stereo_no_xing.mp3"
# (The Ogg muxer picks a random stream serial, so the .ogg differs byte-wise run to run.)
ff "$mono" -c:a libvorbis -q:a 6 "$out/sine_16k_mono.ogg"
ls -l "$out"
