// `espalier bench --batch N --init-channels N --cells N` (bench/sweep.sh's cost curve): the flags
// replace only the named fields of the chosen shape, the result records the size actually run, and
// a size the supernet cannot build is refused with a message that names the flag and a fix.

import EspalierCore
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class BenchSizeOverrideTests: XCTestCase {
    let fmnist = BenchShape.all.first { $0.name == "fmnist" }!

    func testOverriding_ReplacesOnlyTheGivenFields() throws {
        XCTAssertEqual(try fmnist.overriding(), fmnist)
        let s = try fmnist.overriding(batch: 32, c: 64, cells: 14)
        XCTAssertEqual(s, BenchShape(name: "fmnist", batch: 32, channels: 1, height: 28, width: 28, c: 64, cells: 14))
        let c = try fmnist.overriding(c: 32)
        XCTAssertEqual([c.batch, c.channels, c.height, c.width, c.c, c.cells], [64, 1, 28, 28, 32, 8])
        XCTAssertEqual(try fmnist.overriding(cells: 3).cells, 3, "the least depth with a normal cell before both reductions")
    }

    func testOverriding_RefusesWhatTheSupernetCannotBuild_NamingTheFlag() {
        for (batch, c, cells, flag) in [(0, nil, nil, "--batch must be at least 1 (got 0)"), (-4, nil, nil, "--batch must be at least 1 (got -4)"),
                                        (nil, 1, nil, "--init-channels must be between 2 and 65536 (got 1)"),
                                        (nil, nil, 2, "--cells must be between 3 and 1024 (got 2)"),
                                        (nil, nil, 2000, "--cells must be between 3 and 1024 (got 2000)")] as [(Int?, Int?, Int?, String)] {
            XCTAssertThrowsError(try fmnist.overriding(batch: batch, c: c, cells: cells), flag) {
                guard case EspalierError.config(let m) = $0 else { return XCTFail("\($0)") }
                XCTAssertTrue(m.hasPrefix(flag), m)
                XCTAssertTrue(m.contains("e.g. --"), "the message suggests a value: \(m)")
            }
        }
    }

    func testCommandLine_RunsTheOverriddenSize_AndRefusesABadOne() throws {
        _ = try Prerequisite.espalierBinary()
        let cwd = FileManager.default.temporaryDirectory.path
        // A tiny size (one timed step of 4 images at C=4, 3 cells): the JSON names what ran.
        let (status, out) = try EspalierProcess.run(["bench", "--shape", "small", "--batch", "4", "--init-channels", "4", "--cells", "3",
                                                     "--steps", "1", "--json"], cwd: cwd)
        XCTAssertEqual(status, 0, out)
        let line = try XCTUnwrap(out.split(separator: "\n").first { $0.hasPrefix("RESULT ") }, out)
        let r = try JSONDecoder().decode(BenchResult.self, from: Data(line.dropFirst("RESULT ".count).utf8))
        XCTAssertEqual(r.shape, "small")
        XCTAssertEqual([r.batch, r.inChannels, r.height, r.width, r.c, r.cells], [4, 1, 28, 28, 4, 3])
        // The peak is measured twice where the CPU has AVX-512 (as /proc/cpuinfo's flags say): the
        // 8 lanes most of our kernels issue, and the 16 that are the machine's limit.
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? []
        XCTAssertGreaterThan(r.fmaPeakGflops, 0)
        if flags.contains("avx512f") {
            XCTAssertGreaterThan(try XCTUnwrap(r.fmaPeak512Gflops, "this CPU has AVX-512F"), 0)
        } else {
            XCTAssertNil(r.fmaPeak512Gflops, "no AVX-512F in /proc/cpuinfo")
        }
        // --batch-size is the same flag, as `search` spells it; the header names the overrides.
        let (s2, o2) = try EspalierProcess.run(["bench", "--shape", "small", "--batch-size", "4", "--init-channels", "4", "--cells", "3", "--steps", "1"], cwd: cwd)
        XCTAssertEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("darts · small with --batch 4 --init-channels 4 --cells 3 (batch 4, 1×28×28, C=4, 3 cells"), o2)
        XCTAssertTrue(o2.contains("of the measured FMA peak") && o2.contains("GFLOP/s, 8 lanes: AVX2, what most of our kernels issue)"), o2)
        XCTAssertEqual(o2.contains("of this CPU's FMA limit (") && o2.contains("GFLOP/s, 16 lanes: AVX-512)"), flags.contains("avx512f"), o2)
        for (args, message) in [(["--batch", "0"], "--batch must be at least 1 (got 0)"),
                                (["--init-channels", "1"], "--init-channels must be between 2 and 65536 (got 1)"),
                                (["--cells", "2"], "--cells must be between 3 and 1024 (got 2)")] {
            let (s, o) = try EspalierProcess.run(["bench", "--shape", "small"] + args, cwd: cwd)
            XCTAssertNotEqual(s, 0, o)
            XCTAssertTrue(o.contains(message), o)
        }
    }

    /// A result written before the size fields decodes (they are optional).
    func testResultWithoutTheSizeFields_Decodes() throws {
        let old = #"{"variant":"darts","shape":"small","steps":1,"medianSeconds":1,"minSeconds":1,"flopsPerStep":1,"gflops":1,"fmaPeakGflops":1,"peakBytes":1,"recompute":"none","peakByCategory":{},"rssAfterBuildMiB":1,"peakRSSMiB":2,"weights":1,"peakByOwnerKind":{},"poolHits":0,"poolMaps":0,"poolUnmaps":0}"#
        let r = try JSONDecoder().decode(BenchResult.self, from: Data(old.utf8))
        XCTAssertNil(r.batch)
        XCTAssertNil(r.cells)
    }

    /// `--profile`: the ops of a DARTS step by name, each with calls, forward and backward time per
    /// step, adding up to no more than the mean step; absent without the flag.
    func testProfile_TimesTheStepsOps() throws {
        _ = try Prerequisite.espalierBinary()
        let cwd = FileManager.default.temporaryDirectory.path
        let size = ["bench", "--shape", "small", "--batch", "4", "--init-channels", "4", "--cells", "3", "--steps", "2"]
        let (status, out) = try EspalierProcess.run(size + ["--profile", "--json"], cwd: cwd)
        XCTAssertEqual(status, 0, out)
        let line = try XCTUnwrap(out.split(separator: "\n").first { $0.hasPrefix("RESULT ") }, out)
        let r = try JSONDecoder().decode(BenchResult.self, from: Data(line.dropFirst("RESULT ".count).utf8))
        let times = try XCTUnwrap(r.opTimes, out), mean = try XCTUnwrap(r.opTimesMeanStepSeconds, out)
        let ops = Dictionary(uniqueKeysWithValues: times.map { ($0.op, $0) })
        for op in ["fusedSeparableUnit", "weightedSum", "maxPool2d", "avgPool2d", "softmaxCrossEntropy"] {
            let t = try XCTUnwrap(ops[op], "\(op) in \(ops.keys.sorted())")
            XCTAssertGreaterThan(t.callsPerStep, 0, op)
            XCTAssertGreaterThan(t.forwardSeconds, 0, op)
        }
        XCTAssertGreaterThan(try XCTUnwrap(ops["fusedSeparableUnit"]).backwardSeconds, 0)
        XCTAssertEqual(times.map(\.seconds), times.map(\.seconds).sorted(by: >), "largest first")
        XCTAssertLessThanOrEqual(times.reduce(0) { $0 + $1.seconds }, mean * 1.0001, "the ops' times are parts of the step")
        let (s2, o2) = try EspalierProcess.run(size + ["--profile"], cwd: cwd)
        XCTAssertEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("by op, wall clock per step") && o2.contains("fusedSeparableUnit") && o2.contains("(in no op)"), o2)
        // The zero-shot score's forward has no tape: its separable units write into the node sums
        // and record nothing, yet each is counted and timed as itself.
        let (sz, oz) = try EspalierProcess.run(size + ["--variant", "zeroshot", "--profile", "--json"], cwd: cwd)
        XCTAssertEqual(sz, 0, oz)
        let zline = try XCTUnwrap(oz.split(separator: "\n").first { $0.hasPrefix("RESULT ") }, oz)
        let z = try XCTUnwrap(try JSONDecoder().decode(BenchResult.self, from: Data(zline.dropFirst("RESULT ".count).utf8)).opTimes, oz)
        XCTAssertGreaterThan(try XCTUnwrap(z.first { $0.op == "fusedSeparableUnit" }, "\(z.map(\.op))").forwardSeconds, 0)
        let (s3, o3) = try EspalierProcess.run(size + ["--json"], cwd: cwd)
        XCTAssertEqual(s3, 0, o3)
        let plain = try XCTUnwrap(o3.split(separator: "\n").first { $0.hasPrefix("RESULT ") }, o3)
        XCTAssertNil(try JSONDecoder().decode(BenchResult.self, from: Data(plain.dropFirst("RESULT ".count).utf8)).opTimes)
    }
}
