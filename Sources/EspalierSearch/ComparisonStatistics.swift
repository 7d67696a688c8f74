// The statistics of a comparison (`espalier compare`): a sample's mean, standard deviation and
// 95 % confidence interval from Student's t distribution, and the paired comparison of a method
// against random search over the seeds both finished. The t quantile is computed, not tabled:
// Student's CDF through the regularized incomplete beta function (its continued fraction, by
// Lentz's method, as in Numerical Recipes' betai), inverted by bisection.

import Foundation

public enum StudentT {
    /// P(T ≤ t) for Student's t with `df` degrees of freedom.
    public static func cdf(_ t: Double, df: Double) -> Double {
        let tail = 0.5 * regularizedIncompleteBeta(df / (df + t * t), a: df / 2, b: 0.5)
        return t >= 0 ? 1 - tail : tail
    }

    /// The `q` quantile (0 < q < 1): the t with P(T ≤ t) = q, to 1e-12 relative.
    public static func quantile(_ q: Double, df: Double) -> Double {
        precondition(q > 0 && q < 1 && df > 0, "a quantile needs 0 < q < 1 and df > 0")
        var low = -1.0, high = 1.0
        while cdf(high, df: df) < q { high *= 2 }
        while cdf(low, df: df) > q { low *= 2 }
        while high - low > 1e-12 * max(1, abs(high)) {
            let mid = (low + high) / 2
            if cdf(mid, df: df) < q { low = mid } else { high = mid }
        }
        return (low + high) / 2
    }
}

/// I_x(a, b), the regularized incomplete beta function.
func regularizedIncompleteBeta(_ x: Double, a: Double, b: Double) -> Double {
    if x <= 0 { return 0 }
    if x >= 1 { return 1 }
    let logBeta: Double = lgamma(a) + lgamma(b) - lgamma(a + b)
    let front: Double = exp(a * log(x) + b * log(1 - x) - logBeta)
    // The continued fraction converges fast for x < (a + 1)/(a + b + 2); the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) covers the rest.
    if x < (a + 1) / (a + b + 2) { return front * betaContinuedFraction(x, a, b) / a }
    return 1 - front * betaContinuedFraction(1 - x, b, a) / b
}

/// The continued fraction of I_x(a, b) (modified Lentz).
private func betaContinuedFraction(_ x: Double, _ a: Double, _ b: Double) -> Double {
    let tiny = 1e-300
    func guarded(_ v: Double) -> Double { abs(v) < tiny ? tiny : v }
    var c = 1.0
    var d = 1 / guarded(1 - (a + b) * x / (a + 1))
    var h = d
    for m in 1...400 {
        let m = Double(m)
        let even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 / guarded(1 + even * d)
        c = guarded(1 + even / c)
        h *= d * c
        let odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 / guarded(1 + odd * d)
        c = guarded(1 + odd / c)
        h *= d * c
        if abs(d * c - 1) < 1e-15 { break }
    }
    return h
}

/// A sample's mean, standard deviation (n − 1) and two-sided t interval of the mean.
public struct SampleSummary: Codable, Equatable, Sendable {
    public var n: Int
    /// nil for no values.
    public var mean: Double?
    /// nil below two values.
    public var sd: Double?
    /// The interval's ends, mean ∓ t(1 − (1 − level)/2, n − 1)·sd/√n; nil below two values.
    public var low: Double?, high: Double?

    public init(_ values: [Double], level: Double = 0.95) {
        n = values.count
        mean = values.isEmpty ? nil : values.reduce(0, +) / Double(n)
        guard n >= 2, let m = mean else { return }
        let s = (values.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(n - 1)).squareRoot()
        let half = StudentT.quantile(1 - (1 - level) / 2, df: Double(n - 1)) * s / Double(n).squareRoot()
        sd = s; low = m - half; high = m + half
    }
}

/// A method against random search, paired by seed.
public struct PairedComparison: Codable, Equatable, Sendable {
    /// The seeds both finished, in order, and method − random on each.
    public var seeds: [UInt64]
    public var differences: [Double]
    public var summary: SampleSummary

    /// What the interval says: "beats random" (it lies above 0), "worse" (below 0), "level" (it
    /// holds 0), or "too few seeds" (under two pairs: no interval).
    public var verdict: String {
        guard let low = summary.low, let high = summary.high else { return "too few seeds" }
        return low > 0 ? "beats random" : high < 0 ? "worse" : "level"
    }

    /// `method` and `random`: accuracy by seed.
    public init(method: [UInt64: Double], random: [UInt64: Double], level: Double = 0.95) {
        seeds = method.keys.filter { random[$0] != nil }.sorted()
        differences = seeds.map { method[$0]! - random[$0]! }
        summary = SampleSummary(differences, level: level)
    }
}
