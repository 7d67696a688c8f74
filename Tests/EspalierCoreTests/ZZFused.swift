import XCTest
import Dispatch
import EspalierCore

final class ZZFusedTiming: XCTestCase {
    func testFused() throws {
        guard ProcessInfo.processInfo.environment["ZZ_TIMING"] != nil else { throw XCTSkip("scratch") }
        let shapes: [(Int, Int, Int, Int, Int)] = ProcessInfo.processInfo.environment["ZZ_S2"] != nil ? [(32, 28, 3, 1, 2), (32, 28, 5, 1, 2), (32, 28, 3, 2, 2), (32, 28, 5, 2, 2), (64, 14, 3, 1, 2), (64, 14, 5, 1, 2), (64, 14, 3, 2, 2), (64, 14, 5, 2, 2)] : [(16, 28, 3, 1, 1), (16, 28, 5, 1, 1), (16, 28, 3, 2, 1), (16, 28, 5, 2, 1), (16, 28, 3, 1, 2),
                                                   (32, 14, 3, 1, 1), (32, 14, 5, 1, 1), (32, 14, 3, 2, 1), (64, 7, 3, 1, 1), (64, 7, 5, 1, 1), (64, 7, 5, 2, 1)]
        let n = 64
        var tot = [0.0, 0.0, 0.0, 0.0]
        for pass in 0..<2 { for (c, hw, k, dil, st) in shapes {
            let pad = dil * (k - 1) / 2
            let gd = ConvGeometry(n: n, cIn: c, h: hw, w: hw, cOut: c, kh: k, kw: k, stride: st, padding: pad, dilation: dil, groups: c)
            let ho = gd.hOut, howo = ho * gd.wOut
            var rng = RNG(seed: 3)
            func buf(_ count: Int) -> UnsafeMutablePointer<Float> { let p = UnsafeMutablePointer<Float>.allocate(capacity: count); for i in 0..<count { p[i] = Float(rng.int(1000)) / 500 - 1 }; return p }
            let x = buf(n * c * hw * hw), wd = buf(c * k * k), wp = buf(c * c), t = buf(n * c * howo), y = buf(n * c * howo)
            let dY = buf(n * c * howo), dX = buf(n * c * hw * hw), dWd = buf(c * k * k), dWp = buf(c * c)
            let inv = buf(c), m1 = buf(c), m2 = buf(c)
            let sums = UnsafeMutablePointer<Double>.allocate(capacity: 64 * c)
            let fws = buf(max(1, Kernels.separableUnitForwardFloats(gd, keepingT: true)))
            let bws = buf(max(1, Kernels.separableUnitBackwardFloats(gd, cOut: c, needInputGrad: true, needDepthwiseGrad: true, needPointwiseGrad: true, reluInput: true)))
            let dws = buf(max(1, gd.forwardWorkspaceFloats(reluInput: true)) + 100000)
            var best = [1e9, 1e9, 1e9, 1e9, 1e9, 1e9, 1e9]
            for _ in 0..<12 {
                var t0 = DispatchTime.now().uptimeNanoseconds
                func lap(_ i: Int) { let t1 = DispatchTime.now().uptimeNanoseconds; best[i] = min(best[i], Double(t1 - t0) / 1e6); t0 = t1 }
                Kernels.separableUnitForward(gd, cOut: c, x: x, wd: wd, wp: wp, t: t, y: y, sums: sums, reluInput: true, workspace: fws); lap(0)
                Kernels.separableUnitBackward(gd, cOut: c, x: x, wd: wd, t: t, wp: wp, xhat: y, dY: dY, invStd: inv, meanDy: m1, meanDyXhat: m2,
                                              dX: dX, dWd: dWd, dWp: dWp, reluInput: true, workspace: bws); lap(1)
                Kernels.separableUnitBackward(gd, cOut: c, x: x, wd: wd, t: t, wp: wp, xhat: y, dY: dY, invStd: inv, meanDy: m1, meanDyXhat: m2,
                                              dX: nil, dWd: nil, dWp: dWp, reluInput: true, workspace: bws); lap(4)
                Kernels.separableUnitBackward(gd, cOut: c, x: x, wd: wd, t: t, wp: wp, xhat: y, dY: dY, invStd: inv, meanDy: m1, meanDyXhat: m2,
                                              dX: dX, dWd: nil, dWp: nil, reluInput: true, workspace: bws); lap(5)
                Kernels.separableUnitBackward(gd, cOut: c, x: x, wd: wd, t: t, wp: wp, xhat: y, dY: dY, invStd: inv, meanDy: m1, meanDyXhat: m2,
                                              dX: nil, dWd: dWd, dWp: nil, reluInput: true, workspace: bws); lap(6)
                Kernels.conv2dForward(gd, x: x, w: wd, y: t, workspace: dws, reluInput: true); lap(2)
                Kernels.pointwiseForwardWithStatistics(n: n, cIn: c, cOut: c, hw: howo, t: t, w: wp, y: y, sums: sums); lap(3)
            }
            let fd = 2.0 * Double(n * c * howo * k * k), fp = 2.0 * Double(n * c * c * howo)
            if pass == 1 { for i in 0..<4 { tot[i] += best[i] } }
            if pass == 1 && ProcessInfo.processInfo.environment["ZZ_V"] != nil { print(String(format: "ZZ C=%d %d k%d d%d s%d: fwd %.3f ms %.1f GF/s | bwd %.3f ms %.1f GF/s | dw %.3f ms %.1f GF/s | pw %.3f ms %.1f GF/s",
                         c, hw, k, dil, st, best[0], (fd + fp) / best[0] / 1e6, best[1], 2 * (fd + fp) / best[1] / 1e6, best[2], fd / best[2] / 1e6, best[3], fp / best[3] / 1e6)); print(String(format: "   bwd parts: bn+dWp %.3f | bn+dT+dX %.3f | bn+dT+dWd %.3f", best[4], best[5], best[6])) }
        } }
        print(String(format: "ZZT fwd %.3f bwd %.3f dw %.3f pw %.3f", tot[0], tot[1], tot[2], tot[3]))
    }
}
