use candle_core::{Device, Tensor};
fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let t = std::time::Instant::now();
    for _ in 0..3 {
        f();
    }
    println!("{name}: {:.2} ms", t.elapsed().as_secs_f64() / 3.0 * 1e3);
}
fn main() {
    let d = Device::Cpu;
    let t = 1024;
    let qkv = Tensor::randn(0f32, 1.0, (1, t, 3, 12, 64), &d).unwrap();
    time("permute+contig q,k,v", || {
        let p = qkv.permute((2, 0, 3, 1, 4)).unwrap();
        for i in 0..3 {
            let _ = p.get(i).unwrap().contiguous().unwrap();
        }
    });
    let q = Tensor::randn(0f32, 1.0, (1, 12, t, 64), &d).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, 12, t, 64), &d).unwrap();
    time("q@k^T", || {
        let _ = q.matmul(&k.t().unwrap()).unwrap();
    });
    let att = q.matmul(&k.t().unwrap()).unwrap();
    time("scale", || {
        let _ = (&att * 0.125).unwrap();
    });
    time("softmax", || {
        let _ = candle_nn::ops::softmax_last_dim(&att).unwrap();
    });
    time("att@v", || {
        let _ = att.matmul(&q).unwrap();
    });
    let y = att.matmul(&q).unwrap();
    time("transpose+reshape", || {
        let _ = y.transpose(1, 2).unwrap().reshape((t, 768)).unwrap();
    });
    let x = Tensor::randn(0f32, 1.0, (t, 3072), &d).unwrap();
    let b = Tensor::randn(0f32, 1.0, 3072, &d).unwrap();
    time("bias add 3072", || {
        let _ = x.broadcast_add(&b).unwrap();
    });
    time("gelu 3072", || {
        let _ = x.gelu().unwrap();
    });
    let x2 = Tensor::randn(0f32, 1.0, (1, t, 768), &d).unwrap();
    let w = Tensor::ones(768, candle_core::DType::F32, &d).unwrap();
    time("layernorm", || {
        let _ = candle_nn::ops::layer_norm(&x2, &w, &w, 1e-5).unwrap();
    });
    time("residual add", || {
        let _ = (&x2 + &x2).unwrap();
    });
    let wte = Tensor::randn(0f32, 1.0, (50257, 768), &d).unwrap();
    let ids = Tensor::arange(0u32, t as u32, &d).unwrap();
    time("embedding", || {
        let _ = wte.index_select(&ids, 0).unwrap();
    });
}
