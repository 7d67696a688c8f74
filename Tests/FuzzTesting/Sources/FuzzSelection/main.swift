// `--config` selection files: SelectionRequest.load over the same bytes as JSON (`.json`:
// JSONSerialization, then the duplicate-key check through Yams) and as YAML (anything else: Yams,
// alias expansion within ConfigFile.maxValues, duplicate keys), with the size limit of ConfigFile.

import EspalierHost
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSelection(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = FuzzInput.bytes(start, count)
    for name in ["run.json", "run.yaml"] {
        let path = FuzzInput.file(bytes, name: name)
        if let request = FuzzInput.attempt(name, { try SelectionRequest.load(file: path) }) {
            _ = request.overridden(by: SelectionRequest(gate: "espalier.gate.softmax/1"))
        }
    }
    return 0
}
