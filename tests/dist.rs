//! The c10d shim and the data-parallel pieces: collectives between ranks run as threads of
//! this process (Gloo works in-process), launches and faults as real processes.

use std::time::Duration;

use groupcam::dist::{Group, Rendezvous};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `f(group)` on `world` ranks (threads) and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: impl Fn(Group) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let rv = Rendezvous { addr: "127.0.0.1".into(), port, rank, world };
                f(Group::new(&rv, Device::Cpu, timeout).expect("join the group"))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

#[test]
fn all_reduce_broadcast_and_barrier_over_gloo() {
    let out = on_ranks(2, Duration::from_secs(30), |g| {
        let r = g.rank as f64;
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
        let b = Tensor::full([2, 2], r + 10.0, (Kind::Double, Device::Cpu));
        g.all_reduce_sum(&[&a, &b]).unwrap();
        let c = Tensor::full([4], r, (Kind::Float, Device::Cpu));
        g.broadcast(&[&c], 0).unwrap();
        g.barrier().unwrap();
        let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let res = (v(&a), v(&b), v(&c));
        g.finish().unwrap();
        res
    });
    for (a, b, c) in out {
        assert_eq!(a, vec![3.0, 6.0, 9.0]);
        assert_eq!(b, vec![21.0; 4]);
        assert_eq!(c, vec![0.0; 4]);
    }
}
