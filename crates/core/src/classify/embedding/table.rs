//! The token-to-vector table of a static-embedding model, and the arithmetic on it: summing the
//! rows of a text's tokens, normalising, dot products.
//!
//! An F16 (or BF16) table stays F16 in memory and each row is converted while it is added: an F32
//! copy would double the model's resident memory. The conversion is exact (every F16 value is an
//! F32 value), so summing in F32, in token order, gives bit for bit the result of converting the
//! table first. On x86-64 CPUs with F16C (every x86-64 CPU since about 2012) a row is converted 8
//! values per instruction; elsewhere a branch-free portable conversion that the compiler
//! vectorises does the same, exactly (a test compares the two on every F16 value), at about a
//! third of the speed.

/// How the rows are stored.
#[derive(Debug)]
pub(super) enum Storage {
    F32(Vec<f32>),
    /// IEEE 754 binary16 bit patterns.
    F16(Vec<u16>),
    /// bfloat16 bit patterns (the upper half of an F32).
    Bf16(Vec<u16>),
}

impl Storage {
    fn name(&self) -> &'static str {
        match self {
            Storage::F32(_) => "F32",
            Storage::F16(_) => "F16",
            Storage::Bf16(_) => "BF16",
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Storage::F32(v) => v.capacity() * 4,
            Storage::F16(v) | Storage::Bf16(v) => v.capacity() * 2,
        }
    }

    /// The value at `index`, as F32 (load-time checks and tests; the pooling loop converts rows).
    pub(super) fn get(&self, index: usize) -> Option<f32> {
        match self {
            Storage::F32(v) => v.get(index).copied(),
            Storage::F16(v) => v.get(index).map(|&h| f16_to_f32(h)),
            Storage::Bf16(v) => v.get(index).map(|&h| bf16_to_f32(h)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) | Storage::Bf16(v) => v.len(),
        }
    }
}

/// A `[rows, dim]` table, with model2vec's optional per-token `weights` and token -> row
/// `mapping`. Built by the loader, which checks the shapes; [`VectorTable::new`] checks them again.
#[derive(Debug)]
pub(super) struct VectorTable {
    rows: usize,
    dim: usize,
    storage: Storage,
    /// Per token id: a factor on its row (model2vec's `weights`).
    weights: Option<Vec<f32>>,
    /// Per token id: the row that holds its vector (model2vec's vocabulary quantisation).
    mapping: Option<Vec<u32>>,
    /// The CPU converts F16 in hardware (x86-64 F16C and AVX), checked once at construction.
    f16c: bool,
}

impl VectorTable {
    /// `storage` holds `rows * dim` values; `weights` and `mapping` (if any) one entry per token
    /// id, with every mapped row in range. `None` if the shapes disagree.
    pub(super) fn new(
        rows: usize,
        dim: usize,
        storage: Storage,
        weights: Option<Vec<f32>>,
        mapping: Option<Vec<u32>>,
    ) -> Option<Self> {
        let shapes_agree = dim > 0
            && rows.checked_mul(dim) == Some(storage.len())
            && mapping
                .as_ref()
                .is_none_or(|m| m.iter().all(|&r| (r as usize) < rows))
            && match (&weights, &mapping) {
                (Some(w), Some(m)) => w.len() == m.len(),
                _ => true,
            };
        shapes_agree.then_some(VectorTable {
            rows,
            dim,
            storage,
            weights,
            mapping,
            f16c: has_f16c(),
        })
    }

    pub(super) fn dim(&self) -> usize {
        self.dim
    }

    /// Token ids the table can look up: `0..tokens()`.
    pub(super) fn tokens(&self) -> usize {
        match (&self.mapping, &self.weights) {
            (Some(m), _) => m.len(),
            (None, Some(w)) => w.len().min(self.rows),
            (None, None) => self.rows,
        }
    }

    pub(super) fn dtype(&self) -> &'static str {
        self.storage.name()
    }

    /// The table's own heap bytes (rows, weights, mapping).
    pub(super) fn heap_bytes(&self) -> usize {
        self.storage.heap_bytes()
            + self.weights.as_ref().map_or(0, |w| w.capacity() * 4)
            + self.mapping.as_ref().map_or(0, |m| m.capacity() * 4)
    }

    /// Adds token `id`'s vector (times its weight) to `acc` (`dim` long). `false` if the table has
    /// no row for `id` (the loader refuses tokenizers with such ids, so this is defensive).
    pub(super) fn add_token(&self, id: u32, acc: &mut [f32]) -> bool {
        let id = id as usize;
        if id >= self.tokens() || acc.len() != self.dim {
            return false;
        }
        let row = match &self.mapping {
            Some(mapping) => mapping[id] as usize,
            None => id,
        };
        let span = row * self.dim..(row + 1) * self.dim;
        let weight = self.weights.as_ref().map(|w| w[id]);
        match (&self.storage, weight) {
            (Storage::F32(v), None) => add_f32(acc, &v[span]),
            (Storage::F32(v), Some(w)) => add_scaled(acc, v[span].iter().copied(), w),
            (Storage::F16(v), None) => add_f16(acc, &v[span], self.f16c),
            (Storage::F16(v), Some(w)) => {
                add_scaled(acc, v[span].iter().map(|&h| f16_to_f32(h)), w)
            }
            (Storage::Bf16(v), None) => add_bf16(acc, &v[span]),
            (Storage::Bf16(v), Some(w)) => {
                add_scaled(acc, v[span].iter().map(|&h| bf16_to_f32(h)), w)
            }
        }
        true
    }
}

/// Exact IEEE 754 binary16 -> binary32 for finite values (the loader refuses tables holding
/// infinities or NaNs), without branches: the exponent and mantissa bits move into place as an
/// F32 whose exponent is 112 too small, and one multiplication by 2^112 re-biases it. That product
/// is exact for normal numbers and for F16 subnormals alike (these enter as F32 subnormals, which
/// some CPUs multiply slowly; the wordllama table has 554 among its 8.2 million values).
#[inline(always)]
pub(super) fn f16_to_f32(h: u16) -> f32 {
    const TWO_POW_112: f32 = f32::from_bits((127 + 112) << 23);
    let h = u32::from(h);
    f32::from_bits(((h & 0x7fff) << 13) | ((h & 0x8000) << 16)) * TWO_POW_112
}

/// bfloat16 -> binary32: the bits are the upper half of an F32.
#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

fn add_f32(acc: &mut [f32], row: &[f32]) {
    for (a, r) in acc.iter_mut().zip(row) {
        *a += *r;
    }
}

fn add_f16(acc: &mut [f32], row: &[u16], f16c: bool) {
    #[cfg(target_arch = "x86_64")]
    if f16c {
        // SAFETY: `f16c` is true only when the CPU has F16C and AVX (`has_f16c`).
        unsafe { x86::add_f16_f16c(acc, row) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = f16c;
    add_f16_portable(acc, row);
}

fn add_f16_portable(acc: &mut [f32], row: &[u16]) {
    // Fixed-size chunks keep the loop free of bounds checks, so it vectorises.
    let n = acc.len().min(row.len());
    let (acc_chunks, acc_rest) = acc[..n].as_chunks_mut::<8>();
    let (row_chunks, row_rest) = row[..n].as_chunks::<8>();
    for (a, r) in acc_chunks.iter_mut().zip(row_chunks) {
        for i in 0..8 {
            a[i] += f16_to_f32(r[i]);
        }
    }
    for (a, &r) in acc_rest.iter_mut().zip(row_rest) {
        *a += f16_to_f32(r);
    }
}

/// Whether this CPU converts F16 in hardware.
fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128, __m128i, _mm_add_ps, _mm_cvtss_f32, _mm_loadu_si128, _mm_mul_ps, _mm_set_ps,
        _mm_setzero_ps, _mm_shuffle_ps, _mm256_add_ps, _mm256_cvtph_ps, _mm256_loadu_ps,
        _mm256_storeu_ps,
    };

    /// `q`'s dot products with the four rows of `block` (`4 * q.len()` values), each computed
    /// exactly as [`super::dot`] does: lane `i` of eight sums adds `q[8k+i] * row[8k+i]` in order,
    /// then [`super::finish`] adds the lanes and the remainder. SSE is part of x86-64: no
    /// run-time detection is needed.
    #[target_feature(enable = "sse")]
    pub(super) fn dots4(q: &[f32], block: &[f32]) -> [f32; 4] {
        let dim = q.len();
        let (q_chunks, q_rest) = q.as_chunks::<8>();
        let whole = q_chunks.len() * 8;
        let rows: [&[f32]; 4] = std::array::from_fn(|r| &block[r * dim..(r + 1) * dim]);
        let chunks = rows.map(|row| row[..whole].as_chunks::<8>().0);
        let mut sums = [(_mm_setzero_ps(), _mm_setzero_ps()); 4];
        for (c, x) in q_chunks.iter().enumerate() {
            let (x_lo, x_hi) = load8(x);
            for (sum, row) in sums.iter_mut().zip(&chunks) {
                let Some(y) = row.get(c) else { continue };
                let (y_lo, y_hi) = load8(y);
                sum.0 = _mm_add_ps(sum.0, _mm_mul_ps(x_lo, y_lo));
                sum.1 = _mm_add_ps(sum.1, _mm_mul_ps(x_hi, y_hi));
            }
        }
        let mut out = [0.0f32; 4];
        for (r, slot) in out.iter_mut().enumerate() {
            let (lo, hi) = (lanes(sums[r].0), lanes(sums[r].1));
            let all = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
            *slot = super::finish(all, q_rest, &rows[r][whole..]);
        }
        out
    }

    /// Eight values as two registers (the compiler makes these two unaligned loads).
    #[target_feature(enable = "sse")]
    #[inline]
    fn load8(x: &[f32; 8]) -> (__m128, __m128) {
        (
            _mm_set_ps(x[3], x[2], x[1], x[0]),
            _mm_set_ps(x[7], x[6], x[5], x[4]),
        )
    }

    #[target_feature(enable = "sse")]
    #[inline]
    fn lanes(v: __m128) -> [f32; 4] {
        [
            _mm_cvtss_f32(v),
            _mm_cvtss_f32(_mm_shuffle_ps::<0b01>(v, v)),
            _mm_cvtss_f32(_mm_shuffle_ps::<0b10>(v, v)),
            _mm_cvtss_f32(_mm_shuffle_ps::<0b11>(v, v)),
        ]
    }

    /// `acc += row`, 8 values at a time with `vcvtph2ps` (exact, as IEEE 754 requires).
    ///
    /// # Safety
    /// The CPU must support F16C and AVX.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn add_f16_f16c(acc: &mut [f32], row: &[u16]) {
        let n = acc.len().min(row.len());
        let whole = n - n % 8;
        let mut i = 0;
        while i < whole {
            // SAFETY: i + 8 <= n, so both 8-wide reads and the write stay inside the slices;
            // unaligned loads and stores are used.
            unsafe {
                let halves = _mm_loadu_si128(row.as_ptr().add(i).cast::<__m128i>());
                let sum = _mm256_add_ps(
                    _mm256_loadu_ps(acc.as_ptr().add(i)),
                    _mm256_cvtph_ps(halves),
                );
                _mm256_storeu_ps(acc.as_mut_ptr().add(i), sum);
            }
            i += 8;
        }
        super::add_f16_portable(&mut acc[whole..n], &row[whole..n]);
    }
}

fn add_bf16(acc: &mut [f32], row: &[u16]) {
    for (a, &r) in acc.iter_mut().zip(row) {
        *a += bf16_to_f32(r);
    }
}

fn add_scaled(acc: &mut [f32], row: impl Iterator<Item = f32>, weight: f32) {
    for (a, r) in acc.iter_mut().zip(row) {
        *a += r * weight;
    }
}

/// The dot product of two equally long vectors: eight partial sums (two SSE registers, or one AVX
/// register, which the compiler keeps in registers without shuffling) and a fixed order of
/// additions, so the result is the same on every call and every CPU.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a_chunks, a_rest) = a[..n].as_chunks::<8>();
    let (b_chunks, b_rest) = b[..n].as_chunks::<8>();
    let mut sums = [0.0f32; 8];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    finish(sums, a_rest, b_rest)
}

/// `q`'s dot product with each of `rows` (`q.len()` values each, one after the other), in order,
/// into `out`; every result is bit for bit [`dot`]'s. On x86-64, four rows at a time share each
/// load of `q` and keep eight independent sums in SSE registers, written with the intrinsics: the
/// compiler's own vectorisation of this loop shuffled lanes between rows and ran 2-3 times slower.
pub(crate) fn dots(q: &[f32], rows: &[f32], out: &mut Vec<f32>) {
    let dim = q.len();
    if dim == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let rest = {
        let mut blocks = rows.chunks_exact(4 * dim);
        for block in &mut blocks {
            // SAFETY: SSE is part of the x86-64 baseline: every x86-64 CPU has it, and this
            // target always compiles with it.
            out.extend(unsafe { x86::dots4(q, block) });
        }
        blocks.remainder()
    };
    #[cfg(not(target_arch = "x86_64"))]
    let rest = rows;
    for row in rest.chunks_exact(dim) {
        out.push(dot(q, row));
    }
}

/// Adds up the eight partial sums in a fixed order, then the remainders.
#[inline(always)]
fn finish(sums: [f32; 8], a_rest: &[f32], b_rest: &[f32]) -> f32 {
    let mut total =
        ((sums[0] + sums[4]) + (sums[2] + sums[6])) + ((sums[1] + sums[5]) + (sums[3] + sums[7]));
    for (x, y) in a_rest.iter().zip(b_rest) {
        total += x * y;
    }
    total
}

/// Scales `v` to unit length; `false` (and `v` unchanged) if its length is zero or not finite.
pub(crate) fn normalize(v: &mut [f32]) -> bool {
    let norm = dot(v, v).sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_finite_value() {
        for bits in 0..=u16::MAX {
            let reference = half::f16::from_bits(bits);
            if reference.is_finite() {
                assert_eq!(
                    f16_to_f32(bits).to_bits(),
                    reference.to_f32().to_bits(),
                    "{bits:#06x}"
                );
            }
        }
    }

    #[test]
    fn hardware_and_portable_f16_rows_add_alike() {
        // Every F16 bit pattern that is finite, in rows of 8 plus a remainder.
        let finite: Vec<u16> = (0..=u16::MAX)
            .filter(|&b| half::f16::from_bits(b).is_finite())
            .collect();
        for row in finite.chunks(8 * 37 + 5) {
            let mut portable = vec![0.25f32; row.len()];
            let mut dispatched = portable.clone();
            add_f16_portable(&mut portable, row);
            add_f16(&mut dispatched, row, has_f16c());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&portable), bits(&dispatched));
        }
    }

    #[test]
    fn rows_are_summed_with_weights_and_mapping() {
        // Three rows of dim 2; tokens 0..4 map onto them, token 3 with weight 0.5.
        let table = VectorTable::new(
            3,
            2,
            Storage::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            Some(vec![1.0, 1.0, 1.0, 0.5]),
            Some(vec![2, 0, 1, 2]),
        )
        .unwrap();
        let mut acc = [0.0; 2];
        assert!(table.add_token(1, &mut acc));
        assert!(table.add_token(3, &mut acc));
        assert_eq!(acc, [1.0 + 2.5, 2.0 + 3.0]);
        assert!(!table.add_token(4, &mut acc), "no such token");
        assert_eq!(table.tokens(), 4);
    }

    #[test]
    fn f16_and_bf16_rows_add_like_their_f32_values() {
        let values = [0.5f32, -1.25, 3.0, 0.0, 1.0e-6, -65504.0, 0.333, 7.0, 9.5];
        let f16: Vec<u16> = values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let as_f32: Vec<f32> = f16
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect();
        let table = VectorTable::new(1, 9, Storage::F16(f16), None, None).unwrap();
        let mut acc = [1.0f32; 9];
        table.add_token(0, &mut acc);
        let expected: Vec<f32> = as_f32.iter().map(|v| 1.0 + v).collect();
        assert_eq!(acc.to_vec(), expected);

        let bf16: Vec<u16> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let table = VectorTable::new(1, 9, Storage::Bf16(bf16.clone()), None, None).unwrap();
        let mut acc = [0.0f32; 9];
        table.add_token(0, &mut acc);
        let expected: Vec<f32> = bf16
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect();
        assert_eq!(acc.to_vec(), expected);
    }

    #[test]
    fn shapes_that_disagree_are_refused() {
        let f32s = |n| Storage::F32(vec![0.0; n]);
        assert!(VectorTable::new(2, 3, f32s(5), None, None).is_none());
        assert!(VectorTable::new(2, 0, f32s(0), None, None).is_none());
        assert!(VectorTable::new(2, 1, f32s(2), None, Some(vec![0, 2])).is_none());
        assert!(VectorTable::new(2, 1, f32s(2), Some(vec![1.0]), Some(vec![0, 1])).is_none());
    }

    #[test]
    fn dots_in_blocks_equal_single_dots() {
        for dim in [1, 7, 8, 9, 256, 259] {
            let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
            for count in [0, 1, 3, 4, 5, 9] {
                let rows: Vec<f32> = (0..dim * count)
                    .map(|i| (i as f32 * 1.3).cos() / 3.0)
                    .collect();
                let mut got = Vec::new();
                dots(&q, &rows, &mut got);
                let expected: Vec<u32> = rows
                    .chunks_exact(dim)
                    .map(|r| dot(&q, r).to_bits())
                    .collect();
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, expected, "dim {dim}, {count} rows");
            }
        }
    }

    #[test]
    fn dot_and_normalize() {
        let a: Vec<f32> = (1..=11).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (1..=11).map(|i| (i * i) as f32).sum::<f32>());
        let mut v = [3.0f32, 4.0];
        assert!(normalize(&mut v));
        assert_eq!(v, [3.0 / 5.0, 4.0 / 5.0]);
        let mut zero = [0.0f32; 3];
        assert!(!normalize(&mut zero));
    }
}
