//! How a write of one chunk piece of a RAID-4/5/6 stripe goes out when
//! members may be missing (docs/FORMAT.md §12 "Degraded arrays"), as md's
//! `handle_stripe_dirtying` chooses between read-modify-write and
//! reconstruct-write for a degraded stripe: with the data disk present,
//! read-modify-write of it and of the parity blocks that are present;
//! with it missing, reconstruct-write of the parity from the stripe's
//! other data.
//!
//! ```text
//!  plan(layout, stripe, disk, present)
//!     disk present ─► Rmw { p, q }          (p/q: Some(role) when present)
//!     disk missing ─► Reconstruct { p, q }  (at least one of them present)
//!                 └─► None: nothing of the piece could be kept (too many lost)
//! ```

use crate::raid::md_layout::ParityLayout;

/// The members a write of one chunk piece reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParityPlan {
    /// Old data and the present parity blocks read, each parity block
    /// updated by the delta, then data and those parity blocks written
    /// (`p`, `q`: the stripe's P and Q roles, `None` when missing or,
    /// for Q, when the level has none).
    Rmw { p: Option<usize>, q: Option<usize> },
    /// The data disk is missing: every other data block of the stripe
    /// read (or rebuilt), P and Q computed with the new data in its
    /// place, the present ones written.
    Reconstruct { p: Option<usize>, q: Option<usize> },
}

/// The plan for a write to data `disk` of `stripe`, given which roles
/// have a member; `None` when the data and all its parity are missing
/// (more lost than the level survives: assembly refuses such arrays).
pub fn plan(
    layout: &ParityLayout,
    stripe: u64,
    disk: usize,
    present: impl Fn(usize) -> bool,
) -> Option<ParityPlan> {
    let roles = layout.roles(stripe);
    let p = present(roles.p).then_some(roles.p);
    let q = roles.q.filter(|q| present(*q));
    if present(disk) {
        return Some(ParityPlan::Rmw { p, q });
    }
    if p.is_none() && q.is_none() {
        return None;
    }
    Some(ParityPlan::Reconstruct { p, q })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// md's default layouts: RAID-5 left-symmetric (2), RAID-6 ditto.
    fn raid5(disks: usize) -> ParityLayout {
        ParityLayout::new(5, disks, 2).unwrap()
    }

    fn raid6(disks: usize) -> ParityLayout {
        ParityLayout::new(6, disks, 2).unwrap()
    }

    #[test]
    fn whole_arrays_always_read_modify_write_data_and_every_parity() {
        let l6 = raid6(5);
        for stripe in 0..10 {
            let r = l6.roles(stripe);
            for dd in 0..l6.data_disks() {
                let disk = l6.data_disk(stripe, dd);
                assert_eq!(
                    plan(&l6, stripe, disk, |_| true),
                    Some(ParityPlan::Rmw {
                        p: Some(r.p),
                        q: r.q
                    })
                );
            }
        }
    }

    #[test]
    fn raid5_missing_data_disk_reconstructs_and_missing_parity_writes_data_only() {
        let l = raid5(4);
        let lost = 2;
        let mut seen = (0, 0, 0);
        for stripe in 0..8 {
            let r = l.roles(stripe);
            for dd in 0..l.data_disks() {
                let disk = l.data_disk(stripe, dd);
                let got = plan(&l, stripe, disk, |d| d != lost).unwrap();
                let want = if disk == lost {
                    seen.0 += 1;
                    ParityPlan::Reconstruct {
                        p: Some(r.p),
                        q: None,
                    }
                } else if r.p == lost {
                    seen.1 += 1;
                    ParityPlan::Rmw { p: None, q: None }
                } else {
                    seen.2 += 1;
                    ParityPlan::Rmw {
                        p: Some(r.p),
                        q: None,
                    }
                };
                assert_eq!(got, want, "stripe {stripe} disk {disk}");
            }
        }
        // Over a rotation every case occurs: the lost disk is data in 3
        // stripes of 4 and parity in 1.
        assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "{seen:?}");
    }

    #[test]
    fn raid6_with_two_missing_plans_every_combination_of_lost_roles() {
        let l = raid6(5);
        for (a, b) in [(0, 1), (0, 4), (2, 3), (1, 3)] {
            let present = |d: usize| d != a && d != b;
            for stripe in 0..10 {
                let r = l.roles(stripe);
                let q = r.q.unwrap();
                for dd in 0..l.data_disks() {
                    let disk = l.data_disk(stripe, dd);
                    let got = plan(&l, stripe, disk, present).unwrap();
                    let p = present(r.p).then_some(r.p);
                    let qq = present(q).then_some(q);
                    match got {
                        ParityPlan::Rmw { p: gp, q: gq } => {
                            assert!(present(disk));
                            assert_eq!((gp, gq), (p, qq));
                        }
                        ParityPlan::Reconstruct { p: gp, q: gq } => {
                            assert!(!present(disk));
                            assert_eq!((gp, gq), (p, qq));
                            assert!(gp.is_some() || gq.is_some());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn data_and_all_its_parity_missing_has_no_plan() {
        let l = raid5(3);
        let r = l.roles(0);
        let disk = l.data_disk(0, 0);
        assert_eq!(plan(&l, 0, disk, |d| d != disk && d != r.p), None);
    }
}
