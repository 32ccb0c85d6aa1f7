//! Compiles the CUDA kernels (kernels/*.cu: the decoder's, the sampler's and EnCodec's LSTM cell)
//! to PTX for CUDA builds. The target comes from CUDA_COMPUTE_CAP exactly as for candle's own
//! kernels (cudaforge), so one setting picks the architecture of every kernel in the binary.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    #[cfg(feature = "cuda")]
    {
        let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let ptx = cudaforge::KernelBuilder::new()
            .source_files([
                "kernels/attention.cu",
                "kernels/embed.cu",
                "kernels/gemv.cu",
                "kernels/lstm.cu",
                "kernels/sampling.cu",
            ])
            // Included by the kernel files: a change to it must recompile them.
            .watch(["kernels/convert.cuh"])
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .expect("compiling kernels/*.cu with nvcc (see tools/build-cuda.sh)");
        ptx.write(out_dir.join("ptx.rs")).expect("writing the PTX bindings");
    }
}
