// The ETENAS ranking function (Rumiantsev & Coates, 2023; Park et al., 2020): r = ‖K‖_F, K the
// sample-by-sample correlation matrix of a network's logits. logits: (n, c) row-major, one row
// per sample. Each row is centred by its mean over the c classes and scaled to unit norm, so
// K[i][j] = corr(logits_i, logits_j) (numpy's corrcoef with rows as variables); a row with zero
// variance (a dry run's zeros) has no correlation and contributes zero rows/columns. ‖Z Zᵀ‖_F is
// computed as ‖Zᵀ Z‖_F, the same number from a (c, c) matrix. Exported as the dynamic method
// `zeroshot.score` / `nngp-frobenius`, `double(pointer,int64,int64)`, returning NaN for a NULL
// matrix or a non-positive shape.

import EspalierPluginKit

/// ‖K‖_F of the correlation matrix of the rows of `logits` (n, c).
func nngpScore(_ logits: UnsafePointer<Float>, rows n: Int, classes c: Int) -> Double {
    // Z: (n, c), each row centred and scaled to unit L2 norm.
    var z = [Double](repeating: 0, count: n * c)
    for i in 0..<n {
        var mean = 0.0
        for k in 0..<c { mean += Double(logits[i * c + k]) }
        mean /= Double(c)
        var norm2 = 0.0
        for k in 0..<c { let d = Double(logits[i * c + k]) - mean; z[i * c + k] = d; norm2 += d * d }
        let inv = norm2 > 0 ? 1 / norm2.squareRoot() : 0
        for k in 0..<c { z[i * c + k] *= inv }
    }
    // G = Zᵀ Z: (c, c); ‖Z Zᵀ‖_F² = trace(Z Zᵀ Z Zᵀ) = ‖G‖_F².
    var g = [Double](repeating: 0, count: c * c)
    for i in 0..<n {
        for a in 0..<c {
            let za = z[i * c + a]
            if za == 0 { continue }
            for b in 0..<c { g[a * c + b] += za * z[i * c + b] }
        }
    }
    return g.reduce(0) { $0 + $1 * $1 }.squareRoot()
}

/// The dynamic method: `double nngp(const float *logits, int64 rows, int64 classes)`.
let nngpScoreMethod: @convention(c) (UnsafeMutableRawPointer?, Int64, Int64) -> Double = { pointer, rows, classes in
    guard let pointer, rows > 0, classes > 0 else { return .nan }
    return nngpScore(pointer.assumingMemoryBound(to: Float.self), rows: Int(rows), classes: Int(classes))
}
