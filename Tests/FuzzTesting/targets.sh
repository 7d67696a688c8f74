# The fuzz targets and their -max_len (bytes), sourced by check.sh and campaign.sh.
# FuzzCIFAR holds up to 3 records of 3 073 bytes; the others' formats are small text or headers.
FUZZ_TARGETS=(FuzzIDX FuzzCIFAR FuzzNPZ FuzzSafeTensors FuzzSearchConfig FuzzSelection FuzzGenotype FuzzPluginDesc)
declare -A FUZZ_MAX_LEN=([FuzzIDX]=4096 [FuzzCIFAR]=10000 [FuzzNPZ]=4096 [FuzzSafeTensors]=4096 [FuzzSearchConfig]=4096
                         [FuzzSelection]=4096 [FuzzGenotype]=4096 [FuzzPluginDesc]=1024)
